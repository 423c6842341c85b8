//! The loopback block path against the host's own `pread` / `pwrite`.
//!
//! Ours: `vmmio-driver` (the [`Block`] class driver, or its
//! [`VirtQueue`] directly for batches) -> the [`Loopback`] register window
//! -> `MmioTransport` -> `vmmio-devices`' block device -> a
//! [`FileBackend`] over a file in the page cache. The peer: `pread(2)` /
//! `pwrite(2)` of the same offsets of the same file into a page-aligned
//! host buffer, what the device itself ends up doing for each request.
//! The difference is the cost of virtio: rings, registers, request
//! parsing, and (for [`Block`]) its bounce buffer.
//!
//! Everything runs on one thread: the device serves a request inside the
//! driver's `QueueNotify` store, so a kick returns with the batch done.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use vmmio_device::{ExecMode, TransportVersion};
use vmmio_devices::{Block as BlockDevice, BlockOptions, FileBackend, IoEngine};
use vmmio_driver::blk::{Block, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use vmmio_driver::{Dma, Segment, Transport, VirtQueue, DEFAULT_TRANSPORT_FEATURES};
use vmmio_integration::{window_in, GuestHal, Loopback, Mem};
use vmmio_spec::features::{bit, VIRTIO_F_RING_PACKED};

/// Size of the disk file in bytes (64 MiB).
pub const FILE_SIZE: u64 = 64 << 20;
/// A small request in bytes (4 KiB).
pub const SMALL: usize = 4096;
/// A large request in bytes (1 MiB).
pub const LARGE: usize = 1 << 20;
/// Requests per kick at queue depth 32.
pub const DEPTH: usize = 32;
/// Random offsets a small-request workload cycles through.
pub const OFFSETS: usize = 4096;

/// `VIRTIO_BLK_F_FLUSH`: negotiated so that writes are not synced one by
/// one (the peer's `pwrite` is not either).
const VIRTIO_BLK_F_FLUSH: u32 = 9;
/// Status byte value before the device writes it.
const STATUS_UNSET: u8 = 0xff;

/// A scratch disk image in the temporary directory, filled with a pattern
/// and left in the page cache; removed on drop.
#[derive(Debug)]
pub struct DiskFile {
    path: PathBuf,
}

impl DiskFile {
    /// Creates a [`FILE_SIZE`]-byte file and writes every byte of it.
    ///
    /// # Errors
    /// The host error from creating or writing the file.
    pub fn create() -> io::Result<Self> {
        static SERIAL: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "vmmio-bench-{}-{}.img",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        ));
        let disk = Self { path };
        let mut f = File::create(&disk.path)?;
        let chunk: Vec<u8> = (0..LARGE).map(|i| (i * 7 + i / 4096) as u8).collect();
        for _ in 0..FILE_SIZE / LARGE as u64 {
            f.write_all(&chunk)?;
        }
        Ok(disk)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DiskFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `count` random, [`SMALL`]-aligned offsets inside [`FILE_SIZE`], the same
/// sequence for every run (xorshift64, fixed seed).
pub fn random_offsets(count: usize) -> Vec<u64> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let blocks = FILE_SIZE / SMALL as u64;
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % blocks) * SMALL as u64
        })
        .collect()
}

/// A `len`-byte buffer at a page-aligned address inside `storage`, as the
/// guest pages the device reads into are.
fn aligned(storage: &mut Vec<u8>, len: usize) -> std::ops::Range<usize> {
    storage.resize(len + 4096, 0);
    let start = storage.as_ptr().align_offset(4096);
    start..start + len
}

/// The peer: positioned reads and writes of the disk file into host
/// buffers.
pub struct Pread {
    file: File,
    storage: Vec<u8>,
    /// Buffer 0; buffer `k` is `len * k` bytes further.
    range: std::ops::Range<usize>,
    len: usize,
    buffers: usize,
}

impl Pread {
    /// Opens `disk` read-write with one page-aligned buffer of `len` bytes.
    ///
    /// # Errors
    /// The host error from `open(2)`.
    pub fn new(disk: &DiskFile, len: usize) -> io::Result<Self> {
        Self::with_buffers(disk, len, 1)
    }

    /// Opens `disk` read-write with `buffers` (at least 1) page-aligned
    /// buffers of `len` bytes: as many distinct destinations as requests a
    /// driver keeps in flight, so that both sides touch as much memory.
    ///
    /// # Errors
    /// The host error from `open(2)`.
    pub fn with_buffers(disk: &DiskFile, len: usize, buffers: usize) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(disk.path())?;
        let buffers = buffers.max(1);
        let mut storage = Vec::new();
        let range = aligned(&mut storage, len * buffers);
        Ok(Self {
            file,
            storage,
            range: range.start..range.start + len,
            len,
            buffers,
        })
    }

    fn buffer(&self, k: usize) -> std::ops::Range<usize> {
        let shift = self.len * (k % self.buffers);
        self.range.start + shift..self.range.end + shift
    }

    /// Reads the buffer's length at `offset` into buffer 0.
    ///
    /// # Errors
    /// The host error.
    pub fn read(&mut self, offset: u64) -> io::Result<()> {
        self.read_into(0, offset)
    }

    /// Reads the buffer's length at `offset` into buffer `k` (modulo the
    /// number of buffers).
    ///
    /// # Errors
    /// The host error.
    #[inline(never)]
    pub fn read_into(&mut self, k: usize, offset: u64) -> io::Result<()> {
        let r = self.buffer(k);
        self.file.read_exact_at(&mut self.storage[r], offset)
    }

    /// Writes buffer 0 at `offset`.
    ///
    /// # Errors
    /// The host error.
    #[inline(never)]
    pub fn write(&mut self, offset: u64) -> io::Result<()> {
        self.file
            .write_all_at(&self.storage[self.range.clone()], offset)
    }

    /// Writes buffer `k` (modulo the number of buffers) at `offset`.
    ///
    /// # Errors
    /// The host error.
    #[inline(never)]
    pub fn write_from(&mut self, k: usize, offset: u64) -> io::Result<()> {
        let r = self.buffer(k);
        self.file.write_all_at(&self.storage[r], offset)
    }

    /// Buffer 0.
    pub fn data(&self) -> &[u8] {
        &self.storage[self.range.clone()]
    }
}

/// Puts a block device over `disk` behind a loopback window (run as `exec`
/// says) and probes it.
fn probe(disk: &DiskFile, exec: ExecMode) -> io::Result<(Transport<Loopback>, GuestHal)> {
    probe_ring(disk, exec, false)
}

/// As [`probe`]; with `packed` the window offers VIRTIO_F_RING_PACKED and
/// the driver accepts it.
fn probe_ring(
    disk: &DiskFile,
    exec: ExecMode,
    packed: bool,
) -> io::Result<(Transport<Loopback>, GuestHal)> {
    probe_engine(disk, exec, packed, IoEngine::Sync)
}

/// As [`probe_ring`], with the device's block `engine`.
fn probe_engine(
    disk: &DiskFile,
    exec: ExecMode,
    packed: bool,
    engine: IoEngine,
) -> io::Result<(Transport<Loopback>, GuestHal)> {
    let dev: BlockDevice<Mem, FileBackend> = BlockDevice::from_path_with_options(
        disk.path(),
        BlockOptions {
            queue_size: 256,
            engine,
            ..BlockOptions::default()
        },
    )
    .map_err(io::Error::other)?;
    let mut w = window_in(exec, TransportVersion::Modern, Box::new(dev));
    w.io.transport.set_packed_ring(packed);
    let mut t = Transport::probe(w.io)
        .map_err(|e| io::Error::other(e.to_string()))?
        .ok_or_else(|| io::Error::other("no device behind the loopback window"))?;
    if packed {
        t.set_transport_features(DEFAULT_TRANSPORT_FEATURES | bit(VIRTIO_F_RING_PACKED));
    }
    Ok((t, w.hal))
}

fn driver_error(e: vmmio_driver::Error) -> io::Error {
    io::Error::other(e.to_string())
}

/// Ours through the safe class driver: [`Block::read_blocks`] /
/// [`Block::write_blocks`], one request in flight, data bounced through
/// the driver's DMA buffer into a caller buffer.
pub struct BlockApi {
    blk: Block<Loopback, GuestHal>,
    storage: Vec<u8>,
    range: std::ops::Range<usize>,
}

impl BlockApi {
    /// A driver for a device over `disk`, with a caller buffer of `len`
    /// bytes.
    ///
    /// # Errors
    /// Setup failures.
    pub fn new(disk: &DiskFile, len: usize) -> io::Result<Self> {
        let (t, hal) = probe(disk, ExecMode::Sync)?;
        let blk = Block::new(t, hal).map_err(driver_error)?;
        let mut storage = Vec::new();
        let range = aligned(&mut storage, len);
        Ok(Self {
            blk,
            storage,
            range,
        })
    }

    /// Reads the buffer's length at byte `offset`.
    ///
    /// # Errors
    /// Driver errors.
    #[inline(never)]
    pub fn read(&mut self, offset: u64) -> io::Result<()> {
        self.blk
            .read_blocks(offset / 512, &mut self.storage[self.range.clone()])
            .map_err(driver_error)
    }

    /// Writes the buffer at byte `offset`.
    ///
    /// # Errors
    /// Driver errors.
    #[inline(never)]
    pub fn write(&mut self, offset: u64) -> io::Result<()> {
        self.blk
            .write_blocks(offset / 512, &self.storage[self.range.clone()])
            .map_err(driver_error)
    }

    /// The first bytes of the caller buffer (for checks).
    pub fn data(&self) -> &[u8] {
        &self.storage[self.range.clone()]
    }
}

/// Ours through the class driver's zero-copy calls
/// ([`Block::read_blocks_dma`] / [`Block::write_blocks_dma`]): the device
/// reads and writes the caller's DMA buffer, no bounce copy.
pub struct BlockApiDma {
    blk: Block<Loopback, GuestHal>,
    /// Always `Some` between calls.
    buf: Option<Dma<GuestHal>>,
    len: usize,
}

impl BlockApiDma {
    /// A driver for a device over `disk`, with a DMA buffer of `len` bytes.
    ///
    /// # Errors
    /// Setup failures.
    pub fn new(disk: &DiskFile, len: usize) -> io::Result<Self> {
        let (t, hal) = probe(disk, ExecMode::Sync)?;
        let buf = Dma::new(hal.clone(), len).map_err(driver_error)?;
        let blk = Block::new(t, hal).map_err(driver_error)?;
        Ok(Self {
            blk,
            buf: Some(buf),
            len,
        })
    }

    /// Reads the buffer's length at byte `offset`.
    ///
    /// # Errors
    /// Driver errors.
    #[inline(never)]
    pub fn read(&mut self, offset: u64) -> io::Result<()> {
        let buf = self.buf.take().ok_or_else(torn_down)?;
        let buf = self
            .blk
            .read_blocks_dma(offset / 512, buf, self.len)
            .map_err(driver_error)?;
        self.buf = Some(buf);
        Ok(())
    }

    /// Writes the buffer at byte `offset`.
    ///
    /// # Errors
    /// Driver errors.
    #[inline(never)]
    pub fn write(&mut self, offset: u64) -> io::Result<()> {
        let buf = self.buf.take().ok_or_else(torn_down)?;
        let buf = self
            .blk
            .write_blocks_dma(offset / 512, buf, self.len)
            .map_err(driver_error)?;
        self.buf = Some(buf);
        Ok(())
    }
}

/// Ours through the driver's queue, as a guest kernel drives it: up to
/// [`DEPTH`] requests posted, one kick, completions popped; the data
/// buffers are DMA (guest) pages used in place, no bounce copy.
pub struct RawQueue {
    transport: Transport<Loopback>,
    /// Always `Some` until `drop` tears it down.
    queue: Option<VirtQueue<GuestHal>>,
    /// Request headers (32 bytes apart) and, from byte 2048, one status
    /// byte per request.
    req: Dma<GuestHal>,
    /// `depth` data buffers of `len` bytes each.
    data: Dma<GuestHal>,
    len: usize,
    depth: usize,
    tokens: Vec<u16>,
    exec: ExecMode,
    /// The device's engine: with io_uring in [`ExecMode::Sync`], a batch
    /// not completed by the kick waits in `poll_backends` for the ring's
    /// completions, as a synchronous VMM's event loop would.
    engine: IoEngine,
}

/// `poll_backends` rounds a synchronous io_uring batch waits at most (each
/// up to [`POLL_WAIT`]).
const POLL_ROUNDS: u32 = 10_000;
/// One `poll_backends` wait.
const POLL_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// Used-ring polls a worker-mode batch waits at most (far more than a
/// loaded machine needs).
const WORKER_POLLS: u64 = 1 << 32;

/// Offset of the status bytes in the request page.
const STATUS_AT: usize = 2048;

impl RawQueue {
    /// A driver for a device over `disk` with room for `depth` (at most
    /// [`DEPTH`]) requests of `len` bytes each (`len` a multiple of 512;
    /// `depth * len` must fit the loopback's guest memory).
    ///
    /// # Errors
    /// Setup failures.
    pub fn new(disk: &DiskFile, len: usize, depth: usize) -> io::Result<Self> {
        Self::new_in(disk, len, depth, ExecMode::Sync)
    }

    /// As [`RawQueue::new`], with the device run as `exec` says
    /// ([`ExecMode::Worker`]: on its own thread; a batch then polls the
    /// used ring until the worker completed it).
    ///
    /// # Errors
    /// Setup failures.
    pub fn new_in(disk: &DiskFile, len: usize, depth: usize, exec: ExecMode) -> io::Result<Self> {
        Self::with_ring(disk, len, depth, exec, false)
    }

    /// As [`RawQueue::new_in`], on a packed ring (VIRTIO_F_RING_PACKED,
    /// virtio v1.4 §2.8) when `packed`, else on a split ring.
    ///
    /// # Errors
    /// Setup failures, and a packed ring that was not negotiated.
    pub fn with_ring(
        disk: &DiskFile,
        len: usize,
        depth: usize,
        exec: ExecMode,
        packed: bool,
    ) -> io::Result<Self> {
        Self::with_engine(disk, len, depth, exec, packed, IoEngine::Sync)
    }

    /// As [`RawQueue::with_ring`], with the device's block `engine`
    /// ([`IoEngine::IoUring`] fails where the kernel has no io_uring).
    ///
    /// # Errors
    /// As [`RawQueue::with_ring`].
    pub fn with_engine(
        disk: &DiskFile,
        len: usize,
        depth: usize,
        exec: ExecMode,
        packed: bool,
        engine: IoEngine,
    ) -> io::Result<Self> {
        let depth = depth.clamp(1, DEPTH);
        let (mut transport, hal) = probe_engine(disk, exec, packed, engine)?;
        transport
            .begin_init(bit(VIRTIO_BLK_F_FLUSH))
            .map_err(driver_error)?;
        let queue = transport
            .setup_queue(hal.clone(), 0, 128)
            .map_err(driver_error)?;
        if queue.packed() != packed {
            return Err(io::Error::other("ring kind not negotiated"));
        }
        transport.finish_init().map_err(driver_error)?;
        let req = Dma::new(hal.clone(), 4096).map_err(driver_error)?;
        let data = Dma::new(hal, len * depth).map_err(driver_error)?;
        Ok(Self {
            transport,
            queue: Some(queue),
            req,
            data,
            len,
            depth,
            tokens: Vec::with_capacity(DEPTH),
            exec,
            engine,
        })
    }

    /// Submits one request of type `kind` per offset in `offsets` (the
    /// first `depth` of them), kicks once, and completes them all.
    ///
    /// # Errors
    /// Driver errors, or a request that did not end with status OK.
    #[inline(never)]
    pub fn batch(&mut self, kind: u32, offsets: &[u64]) -> io::Result<()> {
        let n = offsets.len().min(self.depth);
        let status = [STATUS_UNSET; DEPTH];
        self.req
            .write_bytes(STATUS_AT, &status[..n])
            .map_err(driver_error)?;
        self.tokens.clear();
        let len = u32::try_from(self.len).map_err(|_| io::ErrorKind::InvalidInput)?;
        for (i, &offset) in offsets[..n].iter().enumerate() {
            let mut header = [0u8; 16];
            header[..4].copy_from_slice(&kind.to_le_bytes());
            header[8..].copy_from_slice(&(offset / 512).to_le_bytes());
            self.req
                .write_bytes(32 * i, &header)
                .map_err(driver_error)?;
            let hdr = Segment {
                addr: self.req.paddr() + 32 * i as u64,
                len: 16,
            };
            let data = Segment {
                addr: self.data.paddr() + (i * self.len) as u64,
                len,
            };
            let st = Segment {
                addr: self.req.paddr() + (STATUS_AT + i) as u64,
                len: 1,
            };
            let queue = self.queue.as_mut().ok_or_else(torn_down)?;
            // SAFETY: the segments lie in `self.req` and `self.data`, DMA
            // memory this struct owns and does not touch until the chain
            // is popped below (a failed pop panics the benchmark; the
            // memory then stays allocated as long as the queue).
            let token = unsafe {
                if kind == VIRTIO_BLK_T_IN {
                    queue.add_segments(&[hdr], &[data, st])
                } else {
                    queue.add_segments(&[hdr, data], &[st])
                }
            }
            .map_err(driver_error)?;
            self.tokens.push(token);
        }
        let queue = self.queue.as_mut().ok_or_else(torn_down)?;
        self.transport
            .notify_if_needed(queue)
            .map_err(driver_error)?;
        let mut done = 0;
        let mut waits = 0u64;
        let mut polls = 0u32;
        while done < n {
            match queue.pop_used().map_err(driver_error)? {
                Some(_) => done += 1,
                None if self.exec == ExecMode::Sync
                    && self.engine == IoEngine::IoUring
                    && polls < POLL_ROUNDS =>
                {
                    polls += 1;
                    self.transport.io_mut().transport.poll_backends(POLL_WAIT)?;
                }
                None if self.exec == ExecMode::Sync => {
                    return Err(io::Error::other("request not completed by the kick"))
                }
                // The worker completes the batch on its own thread.
                None if waits < WORKER_POLLS => {
                    waits += 1;
                    std::hint::spin_loop();
                    if waits.is_multiple_of(64) {
                        std::thread::yield_now();
                    }
                }
                None => return Err(io::Error::other("the worker never completed the batch")),
            }
        }
        let mut got = [0u8; DEPTH];
        self.req
            .read_bytes(STATUS_AT, &mut got[..n])
            .map_err(driver_error)?;
        if got[..n].iter().any(|&s| s != 0) {
            return Err(io::Error::other("a request failed"));
        }
        Ok(())
    }

    /// Reads at `offsets` (at most `depth` of them) in one batch.
    ///
    /// # Errors
    /// As [`RawQueue::batch`].
    pub fn read(&mut self, offsets: &[u64]) -> io::Result<()> {
        self.batch(VIRTIO_BLK_T_IN, offsets)
    }

    /// Writes at `offsets` (at most `depth` of them) in one batch.
    ///
    /// # Errors
    /// As [`RawQueue::batch`].
    pub fn write(&mut self, offsets: &[u64]) -> io::Result<()> {
        self.batch(VIRTIO_BLK_T_OUT, offsets)
    }

    /// The first `out.len()` bytes of data buffer `i` (for checks).
    ///
    /// # Errors
    /// Out of range.
    pub fn data(&self, i: usize, out: &mut [u8]) -> io::Result<()> {
        self.data
            .read_bytes(i * self.len, out)
            .map_err(driver_error)
    }
}

impl Drop for RawQueue {
    fn drop(&mut self) {
        // Stop the device, then the queue, before the queue memory goes.
        let _ = self.transport.reset();
        if let Some(queue) = self.queue.take() {
            let _ = self.transport.teardown_queue(queue);
        }
    }
}

fn torn_down() -> io::Error {
    io::Error::other("the queue was torn down")
}

/// The byte pattern [`DiskFile::create`] wrote at `offset`.
pub fn pattern_at(offset: u64) -> u8 {
    let i = (offset % LARGE as u64) as usize;
    (i * 7 + i / 4096) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_reads_the_file() {
        let disk = DiskFile::create().unwrap();
        let offsets = random_offsets(DEPTH);
        let mut p = Pread::new(&disk, SMALL).unwrap();
        let mut api = BlockApi::new(&disk, SMALL).unwrap();
        let mut raw = RawQueue::new(&disk, SMALL, DEPTH).unwrap();
        raw.read(&offsets).unwrap();
        for (i, &o) in offsets.iter().enumerate() {
            p.read(o).unwrap();
            api.read(o).unwrap();
            assert_eq!(p.data(), api.data());
            let mut got = vec![0u8; SMALL];
            raw.data(i, &mut got).unwrap();
            assert_eq!(got, api.data());
            assert_eq!(got[1], pattern_at(o + 1));
        }
        // Large requests and writes go through too.
        let mut big = RawQueue::new(&disk, LARGE, 2).unwrap();
        big.write(&[0, LARGE as u64]).unwrap();
        big.read(&[3 * LARGE as u64]).unwrap();
        let mut api = BlockApi::new(&disk, LARGE).unwrap();
        api.read(0).unwrap();
        api.write(LARGE as u64).unwrap();
    }
}
