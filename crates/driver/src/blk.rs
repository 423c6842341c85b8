//! Block device driver (virtio v1.4 §5.2 "Block Device"): read, write,
//! flush and get-id requests on request queue 0: one at a time (blocking
//! calls, [`Block::start`]/[`Block::poll`]), or several zero-copy requests
//! in flight ([`Block::submit_dma`]/[`Block::complete`], module `queued`).
//!
//! Requests go through driver-owned DMA buffers (a header/status page and
//! a data bounce buffer), so the public API is safe: caller slices are
//! copied, never handed to the device.

use vmmio_spec::device_id;

use alloc::vec::Vec;

use crate::error::{Error, Result};
use crate::hal::{Dma, Hal, PAGE_SIZE};
use crate::io::RegisterIo;
use crate::queue::{Segment, VirtQueue};
use crate::transport::{Transport, Version};

mod queued;
pub use queued::{Completion, DmaOp, Rejected, Token, MAX_QUEUED_TRANSFER};

/// Sector size in bytes: the unit of `capacity` and of request positions,
/// whatever `blk_size` says (virtio v1.4 §5.2.5).
#[allow(clippy::cast_possible_truncation)] // 512 fits every usize
pub const SECTOR_SIZE: usize = vmmio_spec::blk::SECTOR_SIZE as usize;
pub use vmmio_spec::blk::ID_BYTES;
/// Largest data transfer of one request, in bytes; longer reads and writes
/// are split (128 KiB).
pub const MAX_TRANSFER: usize = 128 * 1024;

/// Largest data transfer of one zero-copy request
/// ([`Block::read_blocks_dma`]), in bytes: one segment, no bounce buffer
/// to bound, so 1 MiB (VIRTIO_BLK_F_SIZE_MAX is not negotiated, so the
/// device accepts any segment size, virtio v1.4 §5.2.3).
pub const MAX_DMA_TRANSFER: usize = 1 << 20;

pub use vmmio_spec::blk::features::{
    BLK_SIZE as VIRTIO_BLK_F_BLK_SIZE, FLUSH as VIRTIO_BLK_F_FLUSH, RO as VIRTIO_BLK_F_RO,
};
pub use vmmio_spec::blk::status::{
    IOERR as VIRTIO_BLK_S_IOERR, OK as VIRTIO_BLK_S_OK, UNSUPP as VIRTIO_BLK_S_UNSUPP,
};
pub use vmmio_spec::blk::types::{
    FLUSH as VIRTIO_BLK_T_FLUSH, GET_ID as VIRTIO_BLK_T_GET_ID, IN as VIRTIO_BLK_T_IN,
    OUT as VIRTIO_BLK_T_OUT,
};

use vmmio_spec::blk::config::{BLK_SIZE as CFG_BLK_SIZE, CAPACITY as CFG_CAPACITY};

/// Offset of the status byte in the request page (after the 16-byte
/// header).
const STATUS_OFF: usize = 16;
/// A status value the device never writes: "not written".
const STATUS_UNSET: u8 = 0xff;

/// Default request queue size asked for, in entries.
pub const DEFAULT_QUEUE_SIZE: u16 = 128;

/// The data part of a request: none, `n` device-written bytes, or bytes
/// for the device.
enum Data<'a> {
    None,
    In(usize),
    Out(&'a [u8]),
    /// The device writes straight into this caller DMA segment.
    InDma(Segment),
    /// The device reads straight from this caller DMA segment.
    OutDma(Segment),
}

impl Data<'_> {
    /// Bytes of data in the request.
    fn len(&self) -> usize {
        match self {
            Data::None => 0,
            Data::In(n) => *n,
            Data::Out(b) => b.len(),
            // A segment length is a u32.
            Data::InDma(s) | Data::OutDma(s) => s.len as usize,
        }
    }

    /// Bytes the device writes before the status byte.
    fn device_written(&self) -> usize {
        match self {
            Data::In(n) => *n,
            Data::InDma(s) => s.len as usize,
            _ => 0,
        }
    }
}

/// One request for the non-blocking interface ([`Block::start`],
/// [`Block::poll`]): what an interrupt-driven kernel uses instead of the
/// blocking calls. Data transfers are at most [`MAX_TRANSFER`] bytes.
///
/// # Example
///
/// ```
/// # use vmmio_driver::{blk::{Block, Request}, Hal, RegisterIo, Result};
/// // Start a read, then go do something else (or halt).
/// fn begin<R: RegisterIo, H: Hal + Clone>(disk: &mut Block<R, H>) -> Result<()> {
///     disk.start(Request::Read { sector: 0, len: 512 })
/// }
///
/// // The device's interrupt handler: acknowledge, then complete the read
/// // if the device is done with it (`Some(512)`, the data in `out`).
/// fn on_interrupt<R: RegisterIo, H: Hal + Clone>(
///     disk: &mut Block<R, H>,
///     out: &mut [u8; 512],
/// ) -> Result<Option<usize>> {
///     disk.handle_interrupt()?;
///     disk.poll(out)
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// Read `len` bytes (a multiple of 512) starting at `sector`
    /// (`VIRTIO_BLK_T_IN`).
    Read {
        /// First sector (512-byte units).
        sector: u64,
        /// Bytes to read.
        len: usize,
    },
    /// Write `data` (a multiple of 512 bytes) starting at `sector`
    /// (`VIRTIO_BLK_T_OUT`).
    Write {
        /// First sector (512-byte units).
        sector: u64,
        /// The bytes to write; copied before [`Block::start`] returns.
        data: &'a [u8],
    },
    /// Flush the write cache (`VIRTIO_BLK_T_FLUSH`).
    Flush,
    /// Fetch the 20-byte device ID string (`VIRTIO_BLK_T_GET_ID`).
    GetId,
}

/// The request the device holds: its chain, type and device-written
/// data length in bytes.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    token: u16,
    kind: u32,
    data_in: usize,
}

/// A virtio block device (device ID 2).
///
/// # Example
///
/// ```
/// # use vmmio_driver::{blk::Block, Hal, RegisterIo, Result, Transport};
/// fn first_sector<R: RegisterIo, H: Hal + Clone>(t: Transport<R>, hal: H) -> Result<[u8; 512]> {
///     let mut disk = Block::new(t, hal)?;
///     let mut sector = [0u8; 512];
///     disk.read_blocks(0, &mut sector)?;
///     Ok(sector)
/// }
/// ```
pub struct Block<R: RegisterIo, H: Hal + Clone> {
    transport: Transport<R>,
    hal: H,
    queue_size: u16,
    queue: Option<VirtQueue<H>>,
    req: Option<Dma<H>>,
    data: Option<Dma<H>>,
    in_flight: Option<InFlight>,
    capacity: u64,
    blk_size: Option<u32>,
    read_only: bool,
    flush: bool,
    broken: bool,
    /// Initialisation failed and FAILED was set: keep it visible.
    failed: bool,
    /// Caller buffers of zero-copy requests that failed while the device
    /// may still use them: freed once the device is reset, leaked if it
    /// never stops.
    orphans: Vec<Dma<H>>,
    /// Requests of `submit_dma` / `submit_flush` in flight.
    queued: Vec<queued::Queued<H>>,
    /// Spare header/status buffers of queued requests.
    hdr_pool: Vec<Dma<H>>,
}

impl<R: RegisterIo, H: Hal + Clone> core::fmt::Debug for Block<R, H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Block")
            .field("capacity", &self.capacity)
            .field("blk_size", &self.blk_size)
            .field("read_only", &self.read_only)
            .field("flush", &self.flush)
            .finish()
    }
}

impl<R: RegisterIo, H: Hal + Clone> Block<R, H> {
    /// Initialises the block device behind `transport` (virtio v1.4
    /// §3.1.1, §5.2.5) with a request queue of up to
    /// [`DEFAULT_QUEUE_SIZE`] entries.
    ///
    /// # Errors
    ///
    /// [`Error::WrongDeviceType`], and any error of
    /// [`Transport::begin_init`], [`Transport::setup_queue`],
    /// [`Transport::finish_init`] or a config read; FAILED is set on the
    /// device when initialisation fails after negotiation started.
    pub fn new(transport: Transport<R>, hal: H) -> Result<Self> {
        Self::with_queue_size(transport, hal, DEFAULT_QUEUE_SIZE)
    }

    /// As [`new`](Self::new), asking for a request queue of up to
    /// `queue_size` entries.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn with_queue_size(transport: Transport<R>, hal: H, queue_size: u16) -> Result<Self> {
        if transport.device_id() != device_id::BLOCK {
            return Err(Error::WrongDeviceType {
                expected: device_id::BLOCK,
                found: transport.device_id(),
            });
        }
        let mut b = Self {
            transport,
            hal,
            queue_size,
            queue: None,
            req: None,
            data: None,
            in_flight: None,
            capacity: 0,
            blk_size: None,
            read_only: false,
            flush: false,
            broken: false,
            failed: false,
            orphans: Vec::new(),
            queued: Vec::new(),
            hdr_pool: Vec::new(),
        };
        b.init()?;
        Ok(b)
    }

    fn init(&mut self) -> Result<()> {
        self.broken = true;
        let wanted = vmmio_spec::features::bit(VIRTIO_BLK_F_RO)
            | vmmio_spec::features::bit(VIRTIO_BLK_F_BLK_SIZE)
            | vmmio_spec::features::bit(VIRTIO_BLK_F_FLUSH);
        let r = self
            .transport
            .begin_init(wanted)
            .and_then(|_| self.init_after_features());
        self.failed = r.is_err();
        if self.failed {
            self.transport.fail();
        }
        r
    }

    fn init_after_features(&mut self) -> Result<()> {
        let t = &mut self.transport;
        self.read_only = t.has_feature(VIRTIO_BLK_F_RO);
        self.flush = t.has_feature(VIRTIO_BLK_F_FLUSH);
        self.capacity = t.read_config_u64(CFG_CAPACITY)?;
        self.blk_size = if t.has_feature(VIRTIO_BLK_F_BLK_SIZE) {
            Some(t.read_config_u32(CFG_BLK_SIZE)?)
        } else {
            None
        };
        self.req = Some(Dma::new(self.hal.clone(), PAGE_SIZE)?);
        self.queue = Some(t.setup_queue(self.hal.clone(), 0, self.queue_size)?);
        t.finish_init()?;
        self.broken = false;
        Ok(())
    }

    /// Resets the device and initialises it again: the way back after
    /// [`Error::DeviceNeedsReset`], a timeout or a device fault.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new), and [`Error::Timeout`] when the reset or a
    /// queue teardown does not complete (the device stays unusable).
    pub fn reinit(&mut self) -> Result<()> {
        self.broken = true;
        self.in_flight = None;
        self.orphan_queued();
        let q = self.queue.take();
        if !self.transport.shutdown(q, true) {
            for d in [self.req.take(), self.data.take()].into_iter().flatten() {
                d.leak();
            }
            self.orphans.drain(..).for_each(Dma::leak);
            return Err(Error::Timeout {
                what: "the device to stop",
            });
        }
        // The device is reset: it no longer touches the orphaned buffers.
        self.orphans.clear();
        self.init()
    }

    /// The transport, e.g. for [`Transport::ack_interrupt`].
    pub fn transport(&mut self) -> &mut Transport<R> {
        &mut self.transport
    }

    /// Capacity in 512-byte sectors, as read at initialisation or by the
    /// last [`refresh_capacity`](Self::refresh_capacity).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Re-reads `capacity` (after a configuration change notification,
    /// virtio v1.4 §5.2.6.1).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the config never reads consistently.
    pub fn refresh_capacity(&mut self) -> Result<u64> {
        self.capacity = self.transport.read_config_u64(CFG_CAPACITY)?;
        Ok(self.capacity)
    }

    /// The device's preferred block size in bytes (`blk_size`), when
    /// VIRTIO_BLK_F_BLK_SIZE was negotiated. Requests still use 512-byte
    /// sectors.
    pub fn blk_size(&self) -> Option<u32> {
        self.blk_size
    }

    /// Whether the device is read-only (VIRTIO_BLK_F_RO).
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether the device supports flush (VIRTIO_BLK_F_FLUSH).
    pub fn supports_flush(&self) -> bool {
        self.flush
    }

    /// Handles an interrupt: acknowledges it (see
    /// [`Transport::ack_interrupt`]). A request started with
    /// [`start`](Self::start) is then completed by [`poll`](Self::poll),
    /// requests of [`submit_dma`](Self::submit_dma) by
    /// [`complete`](Self::complete) (call it until `Ok(None)`); the
    /// blocking calls complete their own.
    ///
    /// # Errors
    ///
    /// [`Error::DeviceNeedsReset`].
    pub fn handle_interrupt(&mut self) -> Result<crate::InterruptEvents> {
        self.transport.ack_interrupt()
    }

    fn check_range(&self, sector: u64, len: usize) -> Result<()> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(Error::UnalignedLength(len));
        }
        let sectors = (len / SECTOR_SIZE) as u64;
        match sector.checked_add(sectors) {
            Some(end) if end <= self.capacity => Ok(()),
            _ => Err(Error::OutOfRange {
                sector,
                sectors,
                capacity: self.capacity,
            }),
        }
    }

    /// Reads `buf.len()` bytes (a multiple of 512) starting at `sector`.
    ///
    /// # Errors
    ///
    /// [`Error::UnalignedLength`], [`Error::OutOfRange`] (nothing sent);
    /// [`Error::BlockStatus`], [`Error::ShortCompletion`], and the errors
    /// of [`Transport::wait_used`].
    pub fn read_blocks(&mut self, sector: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(sector, buf.len())?;
        let mut s = sector;
        for chunk in buf.chunks_mut(MAX_TRANSFER) {
            let n = chunk.len();
            self.request(VIRTIO_BLK_T_IN, s, Data::In(n), chunk)?;
            s += (chunk.len() / SECTOR_SIZE) as u64;
        }
        Ok(())
    }

    /// Writes `buf` (a multiple of 512 bytes) starting at `sector`.
    ///
    /// # Errors
    ///
    /// [`Error::ReadOnly`], [`Error::UnalignedLength`],
    /// [`Error::OutOfRange`] (nothing sent); then as
    /// [`read_blocks`](Self::read_blocks).
    pub fn write_blocks(&mut self, sector: u64, buf: &[u8]) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        self.check_range(sector, buf.len())?;
        let mut s = sector;
        for chunk in buf.chunks(MAX_TRANSFER) {
            self.request(VIRTIO_BLK_T_OUT, s, Data::Out(chunk), &mut [])?;
            s += (chunk.len() / SECTOR_SIZE) as u64;
        }
        Ok(())
    }

    /// Zero-copy read: the device writes `len` bytes (a multiple of 512,
    /// at most `buf.len()`) starting at `sector` straight into the
    /// caller's DMA buffer `buf`, from its byte 0, in requests of at most
    /// [`MAX_DMA_TRANSFER`] bytes; no bounce copy. Returns the buffer.
    ///
    /// # Errors
    ///
    /// [`Error::DmaOutOfBounds`] when `len > buf.len()`; then as
    /// [`read_blocks`](Self::read_blocks). On an error the buffer is gone:
    /// freed at once if the device cannot be using it, otherwise kept by
    /// the driver until the device is reset ([`reinit`](Self::reinit) or
    /// drop), and leaked if it never stops.
    pub fn read_blocks_dma(&mut self, sector: u64, buf: Dma<H>, len: usize) -> Result<Dma<H>> {
        self.dma_transfer(VIRTIO_BLK_T_IN, sector, buf, len)
    }

    /// Zero-copy write: the device reads `len` bytes (a multiple of 512,
    /// at most `buf.len()`) from byte 0 of the caller's DMA buffer `buf`
    /// and writes them starting at `sector`. Returns the buffer.
    ///
    /// # Errors
    ///
    /// [`Error::ReadOnly`], [`Error::DmaOutOfBounds`]; then as
    /// [`read_blocks_dma`](Self::read_blocks_dma).
    pub fn write_blocks_dma(&mut self, sector: u64, buf: Dma<H>, len: usize) -> Result<Dma<H>> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        self.dma_transfer(VIRTIO_BLK_T_OUT, sector, buf, len)
    }

    /// The zero-copy transfers: blocking requests whose data segment is a
    /// slice of the caller's `buf`.
    fn dma_transfer(&mut self, kind: u32, sector: u64, buf: Dma<H>, len: usize) -> Result<Dma<H>> {
        if len > buf.len() {
            return Err(Error::DmaOutOfBounds {
                offset: 0,
                len,
                size: buf.len(),
            });
        }
        self.check_range(sector, len)?;
        let (mut s, mut off) = (sector, 0usize);
        while off < len {
            let n = (len - off).min(MAX_DMA_TRANSFER);
            let seg = Segment {
                addr: buf.paddr() + off as u64,
                len: u32::try_from(n).map_err(|_| Error::ChainTooLong(n as u64))?,
            };
            let data = if kind == VIRTIO_BLK_T_IN {
                Data::InDma(seg)
            } else {
                Data::OutDma(seg)
            };
            if let Err(e) = self.request(kind, s, data, &mut []) {
                if self.broken {
                    // The chain may still be in flight.
                    self.orphans.push(buf);
                }
                return Err(e);
            }
            off += n;
            s += (n / SECTOR_SIZE) as u64;
        }
        Ok(buf)
    }

    /// Flushes the device's write cache (`VIRTIO_BLK_T_FLUSH`, sector 0,
    /// no data: virtio v1.4 §5.2.6.1). Without VIRTIO_BLK_F_FLUSH the
    /// cache is write-through and this returns at once.
    ///
    /// # Errors
    ///
    /// As [`read_blocks`](Self::read_blocks).
    pub fn flush(&mut self) -> Result<()> {
        if !self.flush {
            return Ok(());
        }
        self.request(VIRTIO_BLK_T_FLUSH, 0, Data::None, &mut [])
    }

    /// Fetches the device ID string (`VIRTIO_BLK_T_GET_ID`, 20 bytes,
    /// NUL-padded, no terminator when 20 long).
    ///
    /// # Errors
    ///
    /// [`Error::BlockStatus`] with 2 (UNSUPP) when the device has none;
    /// then as [`read_blocks`](Self::read_blocks).
    pub fn get_id(&mut self) -> Result<[u8; ID_BYTES]> {
        let mut id = [0u8; ID_BYTES];
        self.request(VIRTIO_BLK_T_GET_ID, 0, Data::In(ID_BYTES), &mut id)?;
        Ok(id)
    }

    /// Starts `req` without waiting for it: checks it, hands it to the
    /// device and notifies. The device's used-buffer interrupt then says
    /// it may be done; [`poll`](Self::poll) completes it. One request at a
    /// time: the blocking calls and `start` refuse while one is in flight.
    ///
    /// # Errors
    ///
    /// [`Error::WrongPhase`] while a request is in flight,
    /// [`Error::FeatureNotNegotiated`] for a flush without
    /// VIRTIO_BLK_F_FLUSH, [`Error::UnalignedLength`],
    /// [`Error::OutOfRange`], [`Error::ReadOnly`], [`Error::ChainTooLong`]
    /// for more than [`MAX_TRANSFER`] bytes (nothing sent); then the
    /// errors of [`VirtQueue::add_segments`] and [`Transport::notify`].
    pub fn start(&mut self, req: Request<'_>) -> Result<()> {
        let (kind, sector, data) = match req {
            Request::Read { sector, len } => {
                self.check_range(sector, len)?;
                (VIRTIO_BLK_T_IN, sector, Data::In(len))
            }
            Request::Write { sector, data } => {
                if self.read_only {
                    return Err(Error::ReadOnly);
                }
                self.check_range(sector, data.len())?;
                (VIRTIO_BLK_T_OUT, sector, Data::Out(data))
            }
            Request::Flush if !self.flush => {
                return Err(Error::FeatureNotNegotiated(VIRTIO_BLK_F_FLUSH))
            }
            Request::Flush => (VIRTIO_BLK_T_FLUSH, 0, Data::None),
            Request::GetId => (VIRTIO_BLK_T_GET_ID, 0, Data::In(ID_BYTES)),
        };
        let len = data.len();
        if len > MAX_TRANSFER {
            return Err(Error::ChainTooLong(len as u64));
        }
        self.submit(kind, sector, data)
    }

    /// Completes the request [`start`](Self::start)ed, if the device has
    /// used it: `Ok(None)` while it is in flight (or none was started),
    /// `Ok(Some(n))` once done, with the `n` bytes the device returned
    /// (read data, or the ID string NUL-padded to 20 bytes; 0 for writes
    /// and flushes) copied to the front of `out` (as many as fit). Never
    /// waits: call it after [`handle_interrupt`](Self::handle_interrupt)
    /// reported used buffers.
    ///
    /// # Errors
    ///
    /// As [`read_blocks`](Self::read_blocks), without the timeout.
    pub fn poll(&mut self, out: &mut [u8]) -> Result<Option<usize>> {
        if self.broken {
            return Err(Error::Broken);
        }
        let (Some(f), Some(q)) = (self.in_flight, self.queue.as_mut()) else {
            return Ok(None);
        };
        let used = match q.pop_used_token(f.token) {
            Ok(Some(len)) => Ok(Some(len)),
            Ok(None) => self.transport.check_status().map(|_| None),
            Err(e) => Err(e),
        };
        match used {
            Ok(Some(len)) => self.finish(len, out).map(Some),
            Ok(None) => Ok(None),
            Err(e) => {
                // A device fault with the chain in flight, as in `request`.
                self.broken = true;
                Err(e)
            }
        }
    }

    /// Whether a request [`start`](Self::start)ed has not been completed
    /// by [`poll`](Self::poll) yet.
    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// A blocking request: submit, wait for its used entry, finish.
    fn request(&mut self, kind: u32, sector: u64, data: Data<'_>, out: &mut [u8]) -> Result<()> {
        self.submit(kind, sector, data)?;
        let (Some(f), Some(q)) = (self.in_flight, self.queue.as_mut()) else {
            return Err(Error::Broken);
        };
        match self.transport.wait_used(q, f.token) {
            Ok(len) => self.finish(len, out).map(|_| ()),
            Err(e) => {
                // The chain may still be in flight: never reuse its pages.
                self.broken = true;
                Err(e)
            }
        }
    }

    /// Writes the request into the driver's DMA pages, makes it available
    /// and notifies; records it as in flight.
    fn submit(&mut self, kind: u32, sector: u64, data: Data<'_>) -> Result<()> {
        if self.broken {
            return Err(Error::Broken);
        }
        if self.in_flight.is_some() {
            return Err(Error::WrongPhase("a block request is already in flight"));
        }
        if !self.queued.is_empty() {
            return Err(Error::WrongPhase(
                "queued block requests (submit_dma) are in flight",
            ));
        }
        let legacy = self.transport.version() == Version::Legacy;
        let data_len = data.len();
        let header = encode_header(legacy, kind, sector);
        let req = self.req.as_mut().ok_or(Error::Broken)?;
        req.write_bytes(0, &header)?;
        let req_addr = req.paddr();
        let bounced = matches!(data, Data::In(_) | Data::Out(_));
        if bounced && data_len > 0 && self.data.as_ref().is_none_or(|d| d.len() < data_len) {
            self.data = None;
            self.data = Some(Dma::new(self.hal.clone(), data_len)?);
        }
        let data_seg = match (&data, self.data.as_mut()) {
            (Data::InDma(seg) | Data::OutDma(seg), _) => Some(*seg),
            (_, Some(d)) if data_len > 0 => {
                if let Data::Out(b) = &data {
                    d.write_bytes(0, b)?;
                }
                Some(Segment {
                    addr: d.paddr(),
                    // data_len <= MAX_TRANSFER or ID_BYTES: fits u32.
                    len: u32::try_from(data_len)
                        .map_err(|_| Error::ChainTooLong(data_len as u64))?,
                })
            }
            _ => None,
        };
        let hdr = Segment {
            addr: req_addr,
            len: 16,
        };
        let status = Segment {
            addr: req_addr + STATUS_OFF as u64,
            len: 1,
        };
        let mut readable = heapless_pair(hdr);
        let mut writable = heapless_pair(status);
        match (&data, data_seg) {
            (Data::Out(_) | Data::OutDma(_), Some(seg)) => readable.push(seg),
            (Data::In(_) | Data::InDma(_), Some(seg)) => writable.insert(seg),
            _ => {}
        }
        let q = self.queue.as_mut().ok_or(Error::Broken)?;
        // SAFETY: the segments lie in `self.req` and `self.data`, DMA
        // memory this driver owns, or (zero-copy requests) in a caller's
        // `Dma` that `dma_transfer` owns for the duration; they are not
        // touched until the chain completes, and on any error below
        // `broken` is set so they are never reused, and leaked (not freed)
        // by `Drop`, while the device may still write them (a caller's
        // buffer moves into `orphans` for that).
        let token = unsafe { q.add_segments(readable.as_slice(), writable.as_slice())? };
        self.broken = true;
        self.transport.notify_if_needed(q)?;
        self.broken = false;
        self.in_flight = Some(InFlight {
            token,
            kind,
            data_in: data.device_written(),
        });
        Ok(())
    }

    /// Checks the used entry (`len` bytes written) and the status byte of
    /// the request in flight, copies device-written data to `out`, and
    /// returns its length.
    fn finish(&mut self, len: u32, out: &mut [u8]) -> Result<usize> {
        let f = self.in_flight.take().ok_or(Error::Broken)?;
        let legacy = self.transport.version() == Version::Legacy;
        let req = self.req.as_ref().ok_or(Error::Broken)?;
        let mut st = [0u8];
        req.read_bytes(STATUS_OFF, &mut st)?;
        check_completion(legacy, st[0], len, f.data_in)?;
        let n = f.data_in.min(out.len());
        if let Some(d) = self.data.as_ref().filter(|_| n > 0) {
            d.read_bytes(0, &mut out[..n])?;
        }
        if f.kind == VIRTIO_BLK_T_GET_ID {
            // Devices may write only up to the terminating NUL (QEMU
            // writes strlen + 1 bytes), leaving the rest of the reused DMA
            // buffer stale: pad after the first NUL ourselves.
            if let Some(nul) = out[..n].iter().position(|&b| b == 0) {
                out[nul..n].iter_mut().for_each(|b| *b = 0);
            }
        }
        Ok(f.data_in)
    }
}

/// The outcome of a used request: its status byte `status`, its used
/// `len` in bytes, `data_in` the data bytes the device had to write.
///
/// A failed request is reported whatever `len` says (devices often write
/// only the status byte then). Success must be backed by a `len` covering
/// the data and the status byte (virtio v1.4 §2.7.8.2); legacy devices are
/// known to misreport `len` (§2.7.8.3), so it is ignored for them.
fn check_completion(legacy: bool, status: u8, len: u32, data_in: usize) -> Result<()> {
    let needed = data_in as u64 + 1;
    if status != VIRTIO_BLK_S_OK {
        Err(Error::BlockStatus(status))
    } else if !legacy && u64::from(len) < needed {
        Err(Error::ShortCompletion { len, needed })
    } else {
        Ok(())
    }
}

/// A request's header (le32 type, le32 reserved, le64 sector;
/// guest-native on legacy devices, virtio v1.4 §5.2.6.3) followed by the
/// status byte, preset to "not written".
fn encode_header(legacy: bool, kind: u32, sector: u64) -> [u8; STATUS_OFF + 1] {
    let mut header = [0u8; STATUS_OFF + 1];
    let (k, s) = if legacy {
        (kind.to_ne_bytes(), sector.to_ne_bytes())
    } else {
        (kind.to_le_bytes(), sector.to_le_bytes())
    };
    header[..4].copy_from_slice(&k);
    header[8..16].copy_from_slice(&s);
    header[STATUS_OFF] = STATUS_UNSET;
    header
}

/// A list of at most two segments, without allocation.
struct Pair {
    segs: [Segment; 2],
    n: usize,
}

fn heapless_pair(first: Segment) -> Pair {
    Pair {
        segs: [first, first],
        n: 1,
    }
}

impl Pair {
    fn push(&mut self, s: Segment) {
        self.segs[1] = s;
        self.n = 2;
    }
    fn insert(&mut self, s: Segment) {
        self.segs[1] = self.segs[0];
        self.segs[0] = s;
        self.n = 2;
    }
    fn as_slice(&self) -> &[Segment] {
        &self.segs[..self.n]
    }
}

impl<R: RegisterIo, H: Hal + Clone> Drop for Block<R, H> {
    fn drop(&mut self) {
        // Stop the device before its memory goes (virtio v1.4 §3.3.1);
        // after a failed initialisation only the queue is stopped, so that
        // FAILED stays visible. When the device will not stop, leak the
        // memory instead.
        self.orphan_queued();
        let q = self.queue.take();
        if !self.transport.shutdown(q, !self.failed) {
            for d in [self.req.take(), self.data.take()].into_iter().flatten() {
                d.leak();
            }
            self.orphans.drain(..).for_each(Dma::leak);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::cast_possible_truncation)]
    use super::*;
    use crate::scripted::{blk_handler, ArenaHal, Scripted};
    use crate::IdentityHal;
    use alloc::vec;
    use alloc::vec::Vec;
    use vmmio_spec::features::{bit, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC};
    use vmmio_spec::status;

    fn device(version: u32, features: u64, sectors: usize) -> Scripted {
        let mut s = Scripted::new(version, device_id::BLOCK, 1, 64);
        s.device_features |= features;
        s.handler = Some(blk_handler);
        s.disk = (0..sectors * SECTOR_SIZE)
            .map(|i| (i % 251) as u8)
            .collect();
        s.config = vec![0; 64];
        s.config[..8].copy_from_slice(&u64::try_from(sectors).unwrap().to_le_bytes());
        s.config[20..24].copy_from_slice(&4096u32.to_le_bytes());
        s
    }

    fn round_trip<H: Hal + Clone>(s: &mut Scripted, hal: H) {
        let t = Transport::probe(&mut *s).unwrap().unwrap();
        let mut b = Block::new(t, hal).unwrap();
        assert_eq!(b.capacity(), 300);
        assert_eq!(b.blk_size(), Some(4096));
        assert!(b.supports_flush());
        let mut buf = vec![0u8; 1024];
        b.read_blocks(2, &mut buf).unwrap();
        assert!(buf
            .iter()
            .enumerate()
            .all(|(i, &v)| v == ((1024 + i) % 251) as u8));
        // Period 251, not a divisor of MAX_TRANSFER: a second chunk read or
        // written at the first chunk's sector shows.
        let data: Vec<u8> = (0..MAX_TRANSFER + 512)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        b.write_blocks(10, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        b.read_blocks(10, &mut back).unwrap();
        assert_eq!(back, data);
        b.flush().unwrap();
        assert_eq!(&b.get_id().unwrap()[..12], b"scripted-blk");
        assert_eq!(
            b.read_blocks(299, &mut buf),
            Err(Error::OutOfRange {
                sector: 299,
                sectors: 2,
                capacity: 300
            })
        );
        assert_eq!(
            b.read_blocks(u64::MAX, &mut buf[..512]).unwrap_err(),
            Error::OutOfRange {
                sector: u64::MAX,
                sectors: 1,
                capacity: 300
            }
        );
        assert_eq!(
            b.write_blocks(0, &buf[..100]),
            Err(Error::UnalignedLength(100))
        );
        drop(b);
        assert_eq!(s.disk[10 * 512..10 * 512 + data.len()], data[..]);
        // Dropping the driver reset the device.
        assert_eq!(s.status, 0);
    }

    #[test]
    fn block_modern_read_write_flush_get_id() {
        let f = bit(VIRTIO_BLK_F_BLK_SIZE) | bit(VIRTIO_BLK_F_FLUSH);
        round_trip(&mut device(2, f, 300), IdentityHal);
        let all = f | bit(VIRTIO_F_EVENT_IDX) | bit(VIRTIO_F_INDIRECT_DESC);
        round_trip(&mut device(2, all, 300), IdentityHal);
    }

    #[test]
    fn block_legacy_read_write_flush_get_id() {
        let f = bit(VIRTIO_BLK_F_BLK_SIZE) | bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_F_INDIRECT_DESC);
        round_trip(&mut device(1, f, 300), ArenaHal);
    }

    fn park(_: &mut Scripted, _: u32, _: &crate::scripted::Chain) -> Option<u32> {
        None
    }

    #[test]
    fn block_start_then_poll_completes_only_after_the_device_used_it() {
        for (version, hal_is_arena) in [(2, false), (1, true)] {
            let mut s = device(version, bit(VIRTIO_BLK_F_FLUSH), 8);
            s.config[..8].copy_from_slice(&8u64.to_le_bytes());
            s.handler = Some(park);
            let t = Transport::probe(&mut s).unwrap().unwrap();
            fn run<H: Hal + Clone>(b: &mut Block<&mut Scripted, H>) {
                let mut out = [0u8; 1024];
                b.start(Request::Read {
                    sector: 1,
                    len: 1024,
                })
                .unwrap();
                assert!(b.in_flight());
                assert_eq!(
                    b.start(Request::Flush),
                    Err(Error::WrongPhase("a block request is already in flight"))
                );
                assert_eq!(
                    b.read_blocks(0, &mut out[..512]).unwrap_err(),
                    b.start(Request::GetId).unwrap_err()
                );
                assert_eq!(b.poll(&mut out), Ok(None));
                let io = b.transport().io_mut();
                io.handler = Some(blk_handler);
                io.retry_parked();
                assert_eq!(b.poll(&mut out), Ok(Some(1024)));
                assert!(!b.in_flight());
                assert!(out
                    .iter()
                    .enumerate()
                    .all(|(i, &v)| v == ((512 + i) % 251) as u8));
                // Nothing in flight: nothing to complete.
                assert_eq!(b.poll(&mut out), Ok(None));
                b.start(Request::Write {
                    sector: 7,
                    data: &[9; 512],
                })
                .unwrap();
                assert_eq!(b.poll(&mut out), Ok(Some(0)));
                b.start(Request::Flush).unwrap();
                assert_eq!(b.poll(&mut out), Ok(Some(0)));
                b.start(Request::GetId).unwrap();
                assert_eq!(b.poll(&mut out), Ok(Some(ID_BYTES)));
                assert_eq!(&out[..12], b"scripted-blk");
                assert!(out[12..ID_BYTES].iter().all(|&c| c == 0));
                assert_eq!(
                    b.start(Request::Read {
                        sector: 8,
                        len: 512
                    }),
                    Err(Error::OutOfRange {
                        sector: 8,
                        sectors: 1,
                        capacity: 8
                    })
                );
            }
            if hal_is_arena {
                run(&mut Block::new(t, ArenaHal).unwrap());
            } else {
                run(&mut Block::new(t, IdentityHal).unwrap());
            }
            assert_eq!(s.disk[7 * 512..8 * 512], [9; 512]);
        }
    }

    #[test]
    fn block_poll_sees_device_needs_reset_and_then_refuses() {
        let mut s = device(2, 0, 8);
        let t = Transport::probe(&mut s).unwrap().unwrap();
        let mut b = Block::new(t, IdentityHal).unwrap();
        b.transport().io_mut().needs_reset_on_notify = true;
        let mut out = [0u8; 512];
        b.start(Request::Read {
            sector: 0,
            len: 512,
        })
        .unwrap();
        assert_eq!(b.poll(&mut out), Err(Error::DeviceNeedsReset));
        // The chain may still be in flight: nothing is reused until reinit.
        assert_eq!(b.poll(&mut out), Err(Error::Broken));
        assert_eq!(b.start(Request::GetId), Err(Error::Broken));
        b.transport().io_mut().needs_reset_on_notify = false;
        b.reinit().unwrap();
        assert!(!b.in_flight());
        b.start(Request::GetId).unwrap();
        assert_eq!(b.poll(&mut out), Ok(Some(ID_BYTES)));
    }

    #[test]
    fn block_start_checks_before_sending() {
        let mut s = device(2, bit(VIRTIO_BLK_F_RO), 1024);
        let t = Transport::probe(&mut s).unwrap().unwrap();
        let mut b = Block::new(t, IdentityHal).unwrap();
        assert_eq!(
            b.start(Request::Flush),
            Err(Error::FeatureNotNegotiated(VIRTIO_BLK_F_FLUSH))
        );
        assert_eq!(
            b.start(Request::Write {
                sector: 0,
                data: &[0; 512]
            }),
            Err(Error::ReadOnly)
        );
        assert_eq!(
            b.start(Request::Read {
                sector: 0,
                len: MAX_TRANSFER + 512
            }),
            Err(Error::ChainTooLong((MAX_TRANSFER + 512) as u64))
        );
        assert!(!b.in_flight());
        // The largest transfer is accepted.
        b.start(Request::Read {
            sector: 0,
            len: MAX_TRANSFER,
        })
        .unwrap();
        let mut out = vec![0u8; MAX_TRANSFER];
        assert_eq!(b.poll(&mut out), Ok(Some(MAX_TRANSFER)));
        assert_eq!(out[MAX_TRANSFER - 1], ((MAX_TRANSFER - 1) % 251) as u8);
        drop(b);
        assert_eq!(s.notifications.len(), 1);
    }

    #[test]
    fn block_read_only_refuses_writes() {
        let mut s = device(2, bit(VIRTIO_BLK_F_RO), 8);
        let t = Transport::probe(&mut s).unwrap().unwrap();
        let mut b = Block::new(t, IdentityHal).unwrap();
        assert!(b.read_only());
        assert_eq!(b.write_blocks(0, &[0; 512]), Err(Error::ReadOnly));
        assert_eq!(b.blk_size(), None);
        // No flush feature: flush is a no-op, no request sent.
        b.flush().unwrap();
        drop(b);
        assert!(s.notifications.is_empty());
    }

    #[test]
    fn block_wrong_device_type() {
        let mut s = Scripted::new(2, device_id::ENTROPY, 1, 8);
        let t = Transport::probe(&mut s).unwrap().unwrap();
        assert_eq!(
            Block::new(t, IdentityHal).unwrap_err(),
            Error::WrongDeviceType {
                expected: 2,
                found: 4
            }
        );
    }

    #[test]
    fn block_short_completion_and_bad_status_are_errors() {
        let mut s = device(2, 0, 8);
        let t = Transport::probe(&mut s).unwrap().unwrap();
        let mut b = Block::new(t, IdentityHal).unwrap();
        b.transport().io_mut().used_len_override = Some(1);
        let mut buf = [0u8; 512];
        assert_eq!(
            b.read_blocks(0, &mut buf),
            Err(Error::ShortCompletion {
                len: 1,
                needed: 513
            })
        );
        b.transport().io_mut().used_len_override = None;
        // Type 8 with a 20-byte buffer works; an unsupported device answer:
        b.transport().io_mut().disk.clear();
        assert_eq!(b.read_blocks(0, &mut buf), Err(Error::BlockStatus(1)));
    }

    #[test]
    fn block_device_needs_reset_then_reinit() {
        let mut s = device(2, 0, 8);
        let t = Transport::probe(&mut s).unwrap().unwrap();
        let mut b = Block::new(t, IdentityHal).unwrap();
        b.transport().io_mut().needs_reset_on_notify = true;
        let mut buf = [0u8; 512];
        assert_eq!(b.read_blocks(0, &mut buf), Err(Error::DeviceNeedsReset));
        assert_eq!(b.read_blocks(0, &mut buf), Err(Error::Broken));
        assert_eq!(b.handle_interrupt(), Err(Error::DeviceNeedsReset));
        b.transport().io_mut().needs_reset_on_notify = false;
        b.reinit().unwrap();
        b.read_blocks(0, &mut buf).unwrap();
        assert_eq!(buf[1], 1);
        drop(b);
        assert_eq!(s.status & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn block_dma_read_fills_the_whole_buffer_and_checks_the_used_length() {
        let mut s = device(2, 0, 8);
        let t = Transport::probe(&mut s).unwrap().unwrap();
        let mut b = Block::new(t, IdentityHal).unwrap();
        // `len` may be the whole buffer (one page, the 8 sectors).
        let buf = Dma::new(IdentityHal, PAGE_SIZE).unwrap();
        let buf = b.read_blocks_dma(0, buf, PAGE_SIZE).unwrap();
        let mut got = [0u8; PAGE_SIZE];
        buf.read_bytes(0, &mut got).unwrap();
        assert!(got.iter().enumerate().all(|(i, &v)| v == (i % 251) as u8));
        // The device must write the data and the status byte.
        b.transport().io_mut().used_len_override = Some(1);
        assert_eq!(
            b.read_blocks_dma(0, buf, 512).unwrap_err(),
            Error::ShortCompletion {
                len: 1,
                needed: 513
            }
        );
    }

    #[test]
    fn block_capacity_refresh_and_flush_without_the_feature() {
        let mut s = device(2, 0, 8);
        let t = Transport::probe(&mut s).unwrap().unwrap();
        let mut b = Block::new(t, IdentityHal).unwrap();
        assert_eq!(b.capacity(), 8);
        b.transport().io_mut().config[..8].copy_from_slice(&16u64.to_le_bytes());
        assert_eq!(b.refresh_capacity(), Ok(16));
        assert_eq!(b.capacity(), 16);
        // Without VIRTIO_BLK_F_FLUSH a flush is nothing to send.
        assert!(!b.supports_flush());
        let sent = b.transport().io_mut().notifications.len();
        b.flush().unwrap();
        assert_eq!(b.transport().io_mut().notifications.len(), sent);
        // With it, a flush is a request, and its status counts.
        let mut s = device(2, bit(VIRTIO_BLK_F_FLUSH), 8);
        let t = Transport::probe(&mut s).unwrap().unwrap();
        let mut b = Block::new(t, IdentityHal).unwrap();
        b.flush().unwrap();
        assert_eq!(b.transport().io_mut().notifications.len(), 1);
        b.transport().io_mut().needs_reset_on_notify = true;
        assert_eq!(b.flush(), Err(Error::DeviceNeedsReset));
    }
}
