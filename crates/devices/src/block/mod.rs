//! The virtio block device (virtio v1.4 §5.2 "Block Device").
//!
//! [`Block`] serves requests from one or more request queues against a
//! [`Backend`]: a file or raw image ([`FileBackend`], the default), host
//! memory ([`MemoryBackend`]) or anything a test injects.
//!
//! With the synchronous engine ([`IoEngine::Sync`], the default), requests
//! are processed in [`VirtioDevice::queue_notify`]: every available chain
//! of the notified queue is popped, executed and put in the used ring, then
//! the device asks the queue once whether the driver wants a notification
//! and raises at most one interrupt for the batch. Data moves between guest
//! memory and the backend without intermediate copies and without
//! per-request heap allocation (beyond what the queue does to hand out a
//! chain).
//!
//! With the io_uring engine ([`IoEngine::IoUring`], or [`IoEngine::Auto`]
//! where the kernel has it), IN, OUT and FLUSH requests are submitted to
//! the kernel, one SQE each, and stay in flight across notifications; they
//! complete in any order through the ring's eventfd, listed in
//! [`VirtioDevice::backend_fds`]: the embedder must deliver
//! `backend_event`s (the worker execution model does,
//! `MmioTransport::poll_backends` does for synchronous embedders). Other
//! request types are still served inline. See `uring.rs` for ordering,
//! bounds, reset and the soundness of handing guest memory to the kernel.
//!
//! # Offered features
//! `VIRTIO_BLK_F_SIZE_MAX`, `SEG_MAX`, `BLK_SIZE`, `FLUSH`, `RO` (read-only
//! disks), `MQ` (more than one queue), `DISCARD` and `WRITE_ZEROES` (when
//! enabled and the backend supports them), and the transport features
//! `VIRTIO_F_INDIRECT_DESC`, `VIRTIO_F_EVENT_IDX`, `VIRTIO_F_RING_RESET`.
//! Never `CONFIG_WCE`, `TOPOLOGY`, `GEOMETRY`, `LIFETIME`, `SECURE_ERASE`
//! or `ZONED`: those request types are answered `VIRTIO_BLK_S_UNSUPP`.
//!
//! # Durability
//! With `VIRTIO_BLK_F_FLUSH` negotiated, writes are volatile until a
//! `VIRTIO_BLK_T_FLUSH`, which syncs the backend before its status is
//! written. Without it, every write is synced before its own status
//! (write-through, §5.2.6.2 case 1).
//!
//! # Legacy interface
//! Request and configuration fields are little-endian, as for modern
//! devices. That is also right for legacy (Version 1) drivers on
//! little-endian guests, the only ones vmmio runs; a big-endian legacy guest
//! is not supported.

mod backend;
pub mod request;
mod uring;

#[cfg(test)]
mod tests;

use std::io;
use std::path::Path;

use vm_memory::GuestMemory;
use vmmio_device::{
    ActivateError, BackendFd, DescriptorChain, InterruptStatus, LiveConfig, Queue, VirtioDevice,
};
use vmmio_spec::device_id;
use vmmio_spec::features::{bit, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_RESET};

use crate::chain::{LogLimiter, MoreWork, Served};
pub use backend::{Backend, FileBackend, MemoryBackend};
use request::{features as blk, Capacity, Disk, Limits, ID_BYTES, SECTOR_SIZE};
pub use uring::IoEngine;
use uring::{Done, Tag, Uring};

/// Size of the configuration space this device exposes, in bytes: `struct
/// virtio_blk_config` up to and including `unused1` (virtio v1.4 §5.2.4).
/// Later fields (secure erase, zoned) read as 0.
pub const CONFIG_SIZE: usize = 60;

/// Why a block device could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// Opening or inspecting the backing file failed.
    #[error("cannot open disk image {path}")]
    Open {
        /// The path given.
        path: std::path::PathBuf,
        /// The host error.
        #[source]
        source: io::Error,
    },
    /// The ID string is longer than 20 bytes or not printable ASCII.
    #[error("block device ID {0:?} is not printable ASCII of at most 20 bytes")]
    InvalidId(String),
    /// An option is out of range (the text says which).
    #[error("invalid block device option: {0}")]
    InvalidOption(&'static str),
    /// A capacity beyond `u64::MAX / 512` sectors (its size in bytes
    /// would not fit 64 bits).
    #[error("capacity of {0} sectors is too large")]
    CapacityTooLarge(u64),
    /// [`IoEngine::IoUring`] was asked for and cannot run: the kernel has
    /// no (usable) io_uring, or the backend has no file descriptor.
    #[error("io_uring engine unavailable")]
    IoUring(#[source] io::Error),
}

/// Options of a [`Block`] device. `Default` gives one queue of 256 entries,
/// read-write, 512-byte blocks, no discard / write zeroes and an ID taken
/// from the file name (or empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockOptions {
    /// Refuse writes: offer `VIRTIO_BLK_F_RO`, answer OUT, DISCARD and
    /// WRITE_ZEROES with `VIRTIO_BLK_S_IOERR`.
    pub read_only: bool,
    /// The `VIRTIO_BLK_T_GET_ID` string: printable ASCII, at most 20 bytes.
    /// `None`: the file name (truncated), or empty for non-file backends.
    pub id: Option<String>,
    /// Number of request queues (1..=65535). More than one offers
    /// `VIRTIO_BLK_F_MQ` with `num_queues`.
    pub num_queues: u16,
    /// `QueueSizeMax` of each request queue, in descriptors (1..=32768).
    pub queue_size: u16,
    /// `blk_size`: the optimal block size in bytes, a power of two >= 512.
    /// Sectors stay 512 bytes whatever this is.
    pub blk_size: u32,
    /// `seg_max`: most data segments per request. `None`: `queue_size - 2`
    /// (room for the header and status descriptors).
    pub seg_max: Option<u32>,
    /// `size_max`: largest single segment in bytes (advisory; the device
    /// accepts larger ones).
    pub size_max: u32,
    /// Offer `VIRTIO_BLK_F_DISCARD` if the backend supports it.
    pub discard: bool,
    /// Offer `VIRTIO_BLK_F_WRITE_ZEROES` if the backend supports it.
    pub write_zeroes: bool,
    /// Which engine serves reads, writes and flushes.
    pub engine: IoEngine,
}

impl Default for BlockOptions {
    fn default() -> Self {
        Self {
            read_only: false,
            id: None,
            num_queues: 1,
            queue_size: 256,
            blk_size: 512,
            seg_max: None,
            size_max: 1 << 20,
            discard: false,
            write_zeroes: false,
            engine: IoEngine::Sync,
        }
    }
}

/// Most segments in one discard or write-zeroes request (`max_discard_seg`,
/// `max_write_zeroes_seg`).
const MAX_SEGMENTS: u32 = 32;
/// Most sectors in one discard or write-zeroes segment (4 GiB - 512 bytes).
const MAX_SEGMENT_SECTORS: u32 = u32::MAX / 512;

/// One request queue while the device runs.
struct RunQueue {
    queue: Queue,
    /// The driver broke the ring: the queue is no longer served.
    broken: bool,
}

/// State between `activate` and `reset`.
struct Active<M> {
    mem: M,
    interrupt: InterruptStatus,
    queues: Vec<Option<RunQueue>>,
    features: u64,
}

/// A virtio block device (device ID 2) over a [`Backend`].
///
/// `M` is the guest memory type, `B` the storage. Build one with
/// [`Block::from_path`] or [`Block::with_backend`], then hand it to an
/// `MmioTransport`.
pub struct Block<M, B = FileBackend> {
    /// The io_uring engine, if it runs. Declared before `active` so that it
    /// is dropped first: its drop waits for every SQE, and the guest memory
    /// in `active` must outlive them.
    uring: Option<Uring>,
    /// Completions reaped from `uring`, reused.
    done: Vec<Done>,
    disk: Disk<B>,
    /// `struct virtio_blk_config`, shared with [`BlockConfigHandle`]s.
    config: LiveConfig,
    features: u64,
    queue_max_sizes: Vec<u16>,
    active: Option<Active<M>>,
    /// Chain storage reused by every pop.
    chain: DescriptorChain,
    /// Rate limit of "driver broke the queue" (every queue, every reset).
    broken_log: LogLimiter,
    /// Wakes the device for chains left at the per-call cap.
    more: MoreWork,
}

impl<M> Block<M, FileBackend> {
    /// A block device over the file or raw image at `path`, opened
    /// read-only if `read_only`, with default options and the file name as
    /// its ID.
    ///
    /// # Errors
    /// [`BlockError::Open`] if the file cannot be opened.
    pub fn from_path(path: impl AsRef<Path>, read_only: bool) -> Result<Self, BlockError> {
        Self::from_path_with_options(
            path,
            BlockOptions {
                read_only,
                ..BlockOptions::default()
            },
        )
    }

    /// A block device over the file at `path` with `options` (the file is
    /// opened read-only if `options.read_only`).
    ///
    /// # Errors
    /// [`BlockError::Open`] if the file cannot be opened, or the errors of
    /// [`Block::with_backend`].
    pub fn from_path_with_options(
        path: impl AsRef<Path>,
        mut options: BlockOptions,
    ) -> Result<Self, BlockError> {
        let path = path.as_ref();
        let backend =
            FileBackend::open(path, options.read_only).map_err(|source| BlockError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        if options.id.is_none() {
            options.id = Some(id_from_path(path));
        }
        Self::with_backend(backend, options)
    }
}

/// A printable-ASCII ID of at most 20 bytes from the file name of `path`.
fn id_from_path(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .take(ID_BYTES)
        .collect()
}

impl<M, B: Backend> Block<M, B> {
    /// A block device over `backend` with `options`.
    ///
    /// # Errors
    /// [`BlockError::InvalidId`] for a bad ID, [`BlockError::InvalidOption`]
    /// for zero queues, a queue size of 0 or above 32768, or a `blk_size`
    /// that is not a power of two >= 512.
    pub fn with_backend(backend: B, options: BlockOptions) -> Result<Self, BlockError> {
        let mut id = [0u8; ID_BYTES];
        if let Some(s) = &options.id {
            if s.len() > ID_BYTES || !s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
                return Err(BlockError::InvalidId(s.clone()));
            }
            id[..s.len()].copy_from_slice(s.as_bytes());
        }
        if options.num_queues == 0 {
            return Err(BlockError::InvalidOption("num_queues must be at least 1"));
        }
        if options.queue_size == 0 || options.queue_size > 32768 {
            return Err(BlockError::InvalidOption("queue_size must be in 1..=32768"));
        }
        if options.blk_size < 512 || !options.blk_size.is_power_of_two() {
            return Err(BlockError::InvalidOption(
                "blk_size must be a power of two >= 512",
            ));
        }
        let capacity = Capacity::new(backend.len() / SECTOR_SIZE);
        let discard = options.discard && backend.supports_discard();
        let write_zeroes = options.write_zeroes && backend.supports_write_zeroes();
        let seg_max = options
            .seg_max
            .unwrap_or_else(|| u32::from(options.queue_size).saturating_sub(2).max(1));

        let mut features = bit(blk::SIZE_MAX)
            | bit(blk::SEG_MAX)
            | bit(blk::BLK_SIZE)
            | bit(blk::FLUSH)
            | bit(VIRTIO_F_INDIRECT_DESC)
            | bit(VIRTIO_F_EVENT_IDX)
            | bit(VIRTIO_F_RING_RESET);
        if options.read_only {
            features |= bit(blk::RO);
        }
        if options.num_queues > 1 {
            features |= bit(blk::MQ);
        }
        if discard {
            features |= bit(blk::DISCARD);
        }
        if write_zeroes {
            features |= bit(blk::WRITE_ZEROES);
        }

        let sectors_per_block = options.blk_size / 512;
        let mut config = [0u8; CONFIG_SIZE];
        let mut put = |at: u64, bytes: &[u8]| {
            let at = at as usize; // offsets below CONFIG_SIZE
            config[at..at + bytes.len()].copy_from_slice(bytes);
        };
        // Offsets and fields of struct virtio_blk_config (§5.2.4). Fields
        // left 0: geometry (16..20) and topology (24..32), not offered;
        // writeback (32) and unused0 (33), and unused1 (57..60), which
        // must be 0 (§5.2.5.1); write_zeroes_may_unmap (56): zeroes are
        // written, never unmapped.
        use vmmio_spec::blk::config as off;
        put(off::CAPACITY, &capacity.get().to_le_bytes());
        put(off::SIZE_MAX, &options.size_max.to_le_bytes());
        put(off::SEG_MAX, &seg_max.to_le_bytes());
        put(off::BLK_SIZE, &options.blk_size.to_le_bytes());
        put(off::NUM_QUEUES, &options.num_queues.to_le_bytes());
        if discard {
            put(off::MAX_DISCARD_SECTORS, &MAX_SEGMENT_SECTORS.to_le_bytes());
            put(off::MAX_DISCARD_SEG, &MAX_SEGMENTS.to_le_bytes());
            put(
                off::DISCARD_SECTOR_ALIGNMENT,
                &sectors_per_block.to_le_bytes(),
            );
        }
        if write_zeroes {
            put(
                off::MAX_WRITE_ZEROES_SECTORS,
                &MAX_SEGMENT_SECTORS.to_le_bytes(),
            );
            put(off::MAX_WRITE_ZEROES_SEG, &MAX_SEGMENTS.to_le_bytes());
        }

        let limits = Limits {
            capacity,
            read_only: options.read_only,
            max_discard_seg: MAX_SEGMENTS,
            max_discard_sectors: MAX_SEGMENT_SECTORS,
            max_write_zeroes_seg: MAX_SEGMENTS,
            max_write_zeroes_sectors: MAX_SEGMENT_SECTORS,
        };
        let queue_entries =
            u32::from(options.queue_size).saturating_mul(u32::from(options.num_queues));
        let uring = match (options.engine, backend.raw_fd()) {
            (IoEngine::Sync, _) => None,
            (IoEngine::IoUring, None) => {
                return Err(BlockError::IoUring(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the backend has no file descriptor",
                )))
            }
            (IoEngine::IoUring, Some(fd)) => {
                Some(Uring::new(fd, queue_entries).map_err(BlockError::IoUring)?)
            }
            (IoEngine::Auto, None) => {
                log::info!("virtio-blk: synchronous engine (the backend has no file descriptor)");
                None
            }
            (IoEngine::Auto, Some(fd)) => match Uring::new(fd, queue_entries) {
                Ok(u) => Some(u),
                Err(e) => {
                    log::info!("virtio-blk: io_uring unavailable ({e}), synchronous engine");
                    None
                }
            },
        };
        if let Some(u) = &uring {
            log::info!(
                "virtio-blk: io_uring engine, up to {} requests in flight",
                u.capacity()
            );
        }
        Ok(Self {
            uring,
            done: Vec::new(),
            disk: Disk::new(backend, limits, id),
            config: LiveConfig::new(config.to_vec()),
            features,
            queue_max_sizes: vec![options.queue_size; usize::from(options.num_queues)],
            active: None,
            chain: DescriptorChain::new(),
            broken_log: LogLimiter::default(),
            more: MoreWork::default(),
        })
    }

    /// Capacity in 512-byte sectors: the backend's length rounded down
    /// when the device was made, or what a [`BlockConfigHandle`] set since.
    pub fn capacity(&self) -> u64 {
        self.disk.limits.capacity.get()
    }

    /// A host-side handle that changes the capacity while the device runs
    /// (the backing file grew or shrank); see [`BlockConfigHandle`].
    pub fn config_handle(&self) -> BlockConfigHandle {
        BlockConfigHandle {
            config: self.config.clone(),
            capacity: self.disk.limits.capacity.clone(),
        }
    }

    /// Whether the device is read-only.
    pub fn read_only(&self) -> bool {
        self.disk.limits.read_only
    }

    /// The 20-byte, NUL-padded ID string answered to `VIRTIO_BLK_T_GET_ID`.
    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.disk.id
    }

    /// The engine that runs: [`IoEngine::IoUring`] or [`IoEngine::Sync`]
    /// (never `Auto`: that was resolved when the device was built).
    pub fn engine(&self) -> IoEngine {
        if self.uring.is_some() {
            IoEngine::IoUring
        } else {
            IoEngine::Sync
        }
    }

    /// Requests the io_uring engine has in flight (0 for the synchronous
    /// engine).
    pub fn in_flight(&self) -> usize {
        self.uring.as_ref().map_or(0, Uring::in_flight)
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.disk.backend
    }

    /// The backend, mutably (e.g. to flush it on host shutdown).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.disk.backend
    }
}

impl<M: GuestMemory, B: Backend> Block<M, B> {
    /// Serves every available chain of queue `index`, with one used-buffer
    /// interrupt per batch if the driver wants it. With the io_uring engine,
    /// pops only while the engine has room, submits what it queued and
    /// completes what is already done.
    fn serve(&mut self, index: u16) {
        if self.uring.is_none() {
            self.serve_once(index);
            return;
        }
        // The engine may fill up with chains left in the ring, and the
        // completions reaped right after the submit may empty it again:
        // then nothing in flight lists the eventfd and the driver need not
        // notify (EVENT_IDX), so pop again now. Bounded; past the bound,
        // `more` wakes the device.
        for _ in 0..MAX_REFILLS {
            self.serve_once(index);
            let full = self.uring.as_ref().is_some_and(|u| !u.has_room());
            if !(self.complete() && full) {
                return;
            }
        }
        self.more.signal();
    }

    /// One pass of [`Block::serve`]: pops what the engine has room for,
    /// submits it.
    fn serve_once(&mut self, index: u16) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Some(Some(rq)) = active.queues.get_mut(usize::from(index)) else {
            return;
        };
        let features = active.features;
        let served = Served {
            name: "virtio-blk",
            queue: &mut rq.queue,
            broken: &mut rq.broken,
            mem: &active.mem,
            interrupt: &active.interrupt,
            chain: &mut self.chain,
            broken_log: &mut self.broken_log,
            more: &mut self.more,
        };
        match self.uring.as_mut() {
            None => served.serve(
                &mut self.disk,
                |_| true,
                |disk, mem, descs| disk.process(mem, descs, features, None).unwrap_or(0),
            ),
            Some(uring) => {
                let mut state = (&mut self.disk, &mut *uring);
                served.serve_deferred(
                    &mut state,
                    |(_, uring)| uring.has_room(),
                    |(disk, uring), mem, descs, head| {
                        let tag = Tag { queue: index, head };
                        disk.process(mem, descs, features, Some((&mut **uring, tag)))
                    },
                );
                uring.submit();
            }
        }
    }

    /// Reaps the io_uring engine's completions and puts them in the used
    /// rings, one interrupt per queue at most. Returns whether any request
    /// completed.
    fn complete(&mut self) -> bool {
        let (Some(uring), Some(active)) = (self.uring.as_mut(), self.active.as_mut()) else {
            return false;
        };
        let mut done = std::mem::take(&mut self.done);
        done.clear();
        uring.reap(Some(&active.mem), None, &mut done);
        let any = !done.is_empty();
        put_used(active, &done, &mut self.broken_log);
        self.done = done;
        any
    }
}

/// Puts finished io_uring requests in their queues' used rings and raises
/// one used-buffer interrupt per queue that wants one. Requests of a queue
/// that was reset or broke meanwhile are dropped (the driver gave them up).
fn put_used<M: GuestMemory>(active: &mut Active<M>, done: &[Done], log: &mut LogLimiter) {
    let mut touched = [false; 64];
    let mut many = false;
    for d in done {
        let Some(Some(rq)) = active.queues.get_mut(usize::from(d.queue)) else {
            continue;
        };
        if rq.broken {
            continue;
        }
        if let Err(e) = rq.queue.add_used(&active.mem, d.head, d.len) {
            crate::chain::break_queue("virtio-blk", log, &mut rq.broken, &active.interrupt, &e);
            continue;
        }
        match touched.get_mut(usize::from(d.queue)) {
            Some(t) => *t = true,
            None => many = true,
        }
    }
    for (i, slot) in active.queues.iter_mut().enumerate() {
        let Some(rq) = slot.as_mut() else { continue };
        if rq.broken || !(many || touched.get(i).copied().unwrap_or(false)) {
            continue;
        }
        // On error, notify anyway: a spurious interrupt is harmless.
        if rq.queue.needs_notification(&active.mem).unwrap_or(true) {
            active
                .interrupt
                .raise(vmmio_device::InterruptCause::UsedBuffer);
        }
    }
}

/// Most pop-submit-reap rounds of one [`Block::serve`] call with io_uring.
const MAX_REFILLS: u32 = 4;

/// The token of the io_uring completion eventfd in `backend_fds`.
const URING_TOKEN: u64 = MoreWork::TOKEN - 1;

impl<M, B> VirtioDevice<M> for Block<M, B>
where
    M: GuestMemory + Send,
    B: Backend,
{
    fn device_type(&self) -> u32 {
        device_id::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn device_features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_generation(&self) -> u32 {
        self.config.generation()
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Every field is read-only without CONFIG_WCE.
        log::debug!(
            "virtio-blk: ignored config write of {} bytes at {offset:#x}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: M,
        interrupt: InterruptStatus,
        queues: Vec<Queue>,
        features: u64,
    ) -> Result<(), ActivateError> {
        self.more.open()?;
        let queues = queues
            .into_iter()
            .map(|queue| {
                queue.ready().then_some(RunQueue {
                    queue,
                    broken: false,
                })
            })
            .collect();
        self.config.activate(interrupt.clone());
        self.active = Some(Active {
            mem,
            interrupt,
            queues,
            features,
        });
        // Serve anything made available before DRIVER_OK.
        for index in 0..self.queue_max_sizes.len() {
            self.serve(u16::try_from(index).unwrap_or(u16::MAX));
        }
        Ok(())
    }

    fn queue_notify(
        &mut self,
        index: u16,
        _data: Option<vmmio_spec::notification::NotificationData>,
    ) {
        self.serve(index);
    }

    fn reset(&mut self) {
        self.config.deactivate();
        let active = self.active.take();
        // §2.4: nothing may touch guest memory once Status reads 0, so wait
        // for (or cancel) every SQE before returning, with `active` (the
        // guest memory the iovecs point into) still alive.
        if let Some(uring) = self.uring.as_mut() {
            uring.drain::<M>(None, None, &mut self.done);
            self.done.clear();
        }
        drop(active);
        self.more.clear();
    }

    fn queue_reset(&mut self, index: u16) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if let Some(slot) = active.queues.get_mut(usize::from(index)) {
            *slot = None;
        }
        // The reset queue's requests are cancelled or waited for and
        // dropped (their queue is gone); other queues' that complete
        // meanwhile go to their used rings.
        if let Some(uring) = self.uring.as_mut() {
            let mut done = std::mem::take(&mut self.done);
            done.clear();
            uring.drain(Some(&active.mem), Some(index), &mut done);
            put_used(active, &done, &mut self.broken_log);
            self.done = done;
        }
    }

    fn queue_enable(&mut self, index: u16, queue: Queue) {
        if let Some(slot) = self
            .active
            .as_mut()
            .and_then(|a| a.queues.get_mut(usize::from(index)))
        {
            *slot = Some(RunQueue {
                queue,
                broken: false,
            });
        }
        self.serve(index);
    }

    fn backend_fds(&self) -> Vec<BackendFd> {
        let uring = self
            .uring
            .as_ref()
            .filter(|u| u.in_flight() > 0)
            .map(|u| BackendFd {
                fd: u.eventfd(),
                token: URING_TOKEN,
                readable: true,
                writable: false,
            });
        self.more.backend_fd().into_iter().chain(uring).collect()
    }

    fn backend_event(&mut self, token: u64) {
        if token == URING_TOKEN {
            if let Some(uring) = self.uring.as_mut() {
                uring.clear_eventfd();
            }
        }
        if token == URING_TOKEN && self.complete() {
            // Chains may have waited for room in the engine.
            for index in 0..self.queue_max_sizes.len() {
                self.serve(u16::try_from(index).unwrap_or(u16::MAX));
            }
        }
        if token == MoreWork::TOKEN && self.active.is_some() {
            self.more.clear();
            for index in 0..self.queue_max_sizes.len() {
                self.serve(u16::try_from(index).unwrap_or(u16::MAX));
            }
        }
    }
}

/// Changes a running [`Block`] device's capacity from the host: after the
/// backing file grew or shrank, or to expose more or less of it.
///
/// Cloneable, `Send` and `Sync`; works before, while and after the device
/// sits in a transport, from any thread. A change updates `capacity` in the
/// configuration space as one atomic step with respect to driver reads,
/// increments `ConfigGeneration` (Version 2 windows) and, while the device
/// runs, raises the configuration change interrupt (virtio v1.4 §2.5,
/// §5.2.4). Requests are checked against the new capacity from the moment
/// the driver can read it; requests past the end of a shrunk disk get
/// `VIRTIO_BLK_S_IOERR`.
///
/// The handle does not look at the backend: sectors beyond the backend's
/// end fail with `VIRTIO_BLK_S_IOERR` when accessed, so grow the file first
/// (as with QEMU's `block_resize` or a Firecracker drive PATCH).
///
/// ```
/// use vm_memory::GuestMemoryMmap;
/// use vmmio_devices::{Block, BlockOptions, MemoryBackend};
///
/// let disk: Block<GuestMemoryMmap, _> =
///     Block::with_backend(MemoryBackend::new(4096), BlockOptions::default()).unwrap();
/// let handle = disk.config_handle();
/// std::thread::spawn(move || handle.set_capacity(4)).join().unwrap().unwrap();
/// assert_eq!(disk.capacity(), 4);
/// ```
#[derive(Clone, Debug)]
pub struct BlockConfigHandle {
    config: LiveConfig,
    capacity: Capacity,
}

impl BlockConfigHandle {
    /// The current capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity.get()
    }

    /// Sets the capacity to `sectors` 512-byte sectors. Setting the current
    /// value changes nothing (no generation change, no interrupt).
    ///
    /// # Errors
    /// [`BlockError::CapacityTooLarge`] above `u64::MAX / 512` sectors.
    pub fn set_capacity(&self, sectors: u64) -> Result<(), BlockError> {
        if sectors > Capacity::MAX {
            return Err(BlockError::CapacityTooLarge(sectors));
        }
        self.config.change(|bytes| {
            self.capacity.set(sectors);
            if let Some(field) = bytes.get_mut(..8) {
                field.copy_from_slice(&sectors.to_le_bytes());
            }
        });
        Ok(())
    }

    /// Sets the capacity from a backing size of `len` bytes (rounded down
    /// to whole sectors), e.g. the new length of the image file.
    ///
    /// # Errors
    /// None in practice (`len / 512` always fits); as
    /// [`BlockConfigHandle::set_capacity`].
    pub fn set_len(&self, len: u64) -> Result<(), BlockError> {
        self.set_capacity(len / SECTOR_SIZE)
    }
}

/// Copies `data.len()` bytes of `config` from byte `offset`; bytes past the
/// end read as 0 (any offset, any length, no panic). For configuration
/// spaces the host never changes (devices with live changes keep theirs in a
/// [`LiveConfig`]).
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

impl<M, B: std::fmt::Debug> std::fmt::Debug for Block<M, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("backend", &self.disk.backend)
            .field("capacity", &self.disk.limits.capacity.get())
            .field("read_only", &self.disk.limits.read_only)
            .field("active", &self.active.is_some())
            .finish()
    }
}
