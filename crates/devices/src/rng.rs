//! The virtio entropy device (virtio v1.4 §5.4 "Entropy Device").
//!
//! One queue, `requestq` (index 0). The driver posts device-writable
//! buffers; the device fills them from an [`EntropySource`] (the host OS
//! RNG through the `getrandom` crate by default) and reports how many bytes
//! it wrote. No feature bits, no configuration space.
//!
//! # Per-request cap
//! A request gets at most [`MAX_REQUEST_BYTES`] (64 KiB) of random data,
//! even when its buffers are longer: the device MAY use less than the whole
//! buffer (§5.4.6.1). The total length of a chain is chosen by the driver
//! and is not a measure of guest memory: descriptors may overlap or repeat
//! the same buffer, so up to 32768 descriptors of 4 GiB each can be made to
//! point at one page. Without a cap, a hostile chain could make the host
//! spend unbounded time (and, for an implementation that buffers a request,
//! memory) on one request. The device also never allocates per request: it
//! fills a fixed 4 KiB buffer and copies it out piece by piece.

use std::fmt;

use vm_memory::GuestMemory;
use vmmio_device::queue::Descriptor;
use vmmio_device::{
    ActivateError, BackendFd, DescriptorChain, InterruptStatus, Queue, VirtioDevice,
};
use vmmio_spec::device_id;
use vmmio_spec::features::{bit, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_RESET};

use crate::chain::{ChainLayout, LogLimiter, MoreWork, Region, Served};

/// Most random bytes given to one request, in bytes (see the module docs).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Size of the host buffer random bytes are generated into, in bytes.
const CHUNK: usize = 4096;

/// `QueueSizeMax` of the request queue, in descriptors.
pub const QUEUE_SIZE: u16 = 256;

/// Where random bytes come from.
pub trait EntropySource: Send {
    /// Fills `buf` entirely with random bytes.
    ///
    /// # Errors
    /// The source's failure; the device then completes the request with
    /// length 0 and logs it.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), getrandom::Error>;
}

/// The host OS random number generator (`getrandom(2)` on Linux), through
/// the `getrandom` crate.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsRng;

impl EntropySource for OsRng {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), getrandom::Error> {
        getrandom::fill(buf)
    }
}

/// State between `activate` and `reset`.
struct Active<M> {
    mem: M,
    interrupt: InterruptStatus,
    queue: Option<Queue>,
    broken: bool,
}

/// Fills requests: the source, a fixed host buffer and fault counters.
struct Filler {
    source: Box<dyn EntropySource>,
    buf: Box<[u8; CHUNK]>,
    malformed: LogLimiter,
    host_errors: LogLimiter,
}

/// A virtio entropy device (device ID 4).
pub struct Rng<M> {
    filler: Filler,
    queue_max_sizes: [u16; 1],
    active: Option<Active<M>>,
    chain: DescriptorChain,
    /// Rate limit of "driver broke the queue" (across resets).
    broken_log: LogLimiter,
    /// Wakes the device for chains left at the per-call cap.
    more: MoreWork,
}

impl<M> Rng<M> {
    /// An entropy device fed by the host OS RNG ([`OsRng`]).
    pub fn new() -> Self {
        Self::with_source(Box::new(OsRng))
    }

    /// An entropy device fed by `source` (tests inject deterministic or
    /// failing sources).
    pub fn with_source(source: Box<dyn EntropySource>) -> Self {
        Self {
            filler: Filler {
                source,
                buf: Box::new([0; CHUNK]),
                malformed: LogLimiter::default(),
                host_errors: LogLimiter::default(),
            },
            queue_max_sizes: [QUEUE_SIZE],
            active: None,
            chain: DescriptorChain::new(),
            broken_log: LogLimiter::default(),
            more: MoreWork::default(),
        }
    }

    /// Sets `QueueSizeMax` of the request queue to `size` descriptors
    /// (default [`QUEUE_SIZE`]), clamped to 1..=32768. The driver may choose any
    /// power of two up to it (virtio v1.4 §2.7 "Split Virtqueues").
    pub fn with_queue_size(mut self, size: u16) -> Self {
        self.queue_max_sizes = [size.clamp(1, 32768)];
        self
    }
}

impl<M> Default for Rng<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> fmt::Debug for Rng<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rng")
            .field("active", &self.active.is_some())
            .finish()
    }
}

impl Filler {
    /// Fills the writable buffers of one request and returns the used
    /// length: the random bytes written, at most [`MAX_REQUEST_BYTES`].
    /// A chain with a device-readable descriptor is malformed (§5.4.6.1:
    /// the driver MUST NOT place readable buffers) and gets 0, as does one
    /// whose buffers lie outside guest memory or when the source fails.
    fn fill_request<M: GuestMemory>(&mut self, mem: &M, descs: &[Descriptor]) -> u32 {
        let Self {
            source,
            buf,
            malformed,
            host_errors,
        } = self;
        let layout = match ChainLayout::split(descs) {
            Ok(l) if l.readable.is_empty() => l,
            Ok(_) => {
                log::log!(
                    malformed.level(),
                    "virtio-rng: request with a device-readable buffer"
                );
                return 0;
            }
            Err(e) => {
                log::log!(malformed.level(), "virtio-rng: malformed chain: {e}");
                return 0;
            }
        };
        let want = layout.writable_len.min(MAX_REQUEST_BYTES as u64);
        let region = Region::new(layout.writable, 0, want);
        let mut done = 0u64;
        for piece in region.pieces() {
            let (addr, len) = match piece {
                Ok(p) => p,
                Err(e) => {
                    log::log!(malformed.level(), "virtio-rng: bad buffer: {e}");
                    break;
                }
            };
            let mut off = 0usize;
            // At most MAX_REQUEST_BYTES / CHUNK rounds over the request.
            while off < len {
                let n = (len - off).min(CHUNK);
                let chunk = &mut buf[..n];
                if let Err(e) = source.fill(chunk) {
                    log::log!(
                        host_errors.level(),
                        "virtio-rng: entropy source failed: {e}"
                    );
                    return u32::try_from(done).unwrap_or(0);
                }
                let Some(at) = addr.0.checked_add(off as u64) else {
                    break;
                };
                if let Err(e) =
                    vm_memory::Bytes::write_slice(mem, chunk, vm_memory::GuestAddress(at))
                {
                    log::log!(malformed.level(), "virtio-rng: bad buffer: {e}");
                    // Bytes before this one were written: report them.
                    return u32::try_from(done).unwrap_or(0);
                }
                off += n;
                done += n as u64;
            }
        }
        // `done <= MAX_REQUEST_BYTES`, which fits u32.
        u32::try_from(done).unwrap_or(0)
    }
}

impl<M: GuestMemory> Rng<M> {
    fn serve(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Some(queue) = active.queue.as_mut() else {
            return;
        };
        Served {
            name: "virtio-rng",
            queue,
            broken: &mut active.broken,
            mem: &active.mem,
            interrupt: &active.interrupt,
            chain: &mut self.chain,
            broken_log: &mut self.broken_log,
            more: &mut self.more,
        }
        .serve(
            &mut self.filler,
            |_| true,
            |filler, mem, descs| filler.fill_request(mem, descs),
        );
    }
}

impl<M: GuestMemory + Send> VirtioDevice<M> for Rng<M> {
    fn device_type(&self) -> u32 {
        device_id::ENTROPY
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn device_features(&self) -> u64 {
        bit(VIRTIO_F_INDIRECT_DESC) | bit(VIRTIO_F_EVENT_IDX) | bit(VIRTIO_F_RING_RESET)
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // No configuration space (§5.4.4): everything reads 0.
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "virtio-rng: ignored config write of {} bytes at {offset:#x}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: M,
        interrupt: InterruptStatus,
        queues: Vec<Queue>,
        _features: u64,
    ) -> Result<(), ActivateError> {
        self.more.open()?;
        let queue = queues.into_iter().next().filter(Queue::ready);
        self.active = Some(Active {
            mem,
            interrupt,
            queue,
            broken: false,
        });
        self.serve();
        Ok(())
    }

    fn queue_notify(
        &mut self,
        index: u16,
        _data: Option<vmmio_spec::notification::NotificationData>,
    ) {
        if index == 0 {
            self.serve();
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.more.clear();
    }

    fn queue_reset(&mut self, index: u16) {
        if let (0, Some(active)) = (index, self.active.as_mut()) {
            active.queue = None;
            active.broken = false;
        }
    }

    fn queue_enable(&mut self, index: u16, queue: Queue) {
        if let (0, Some(active)) = (index, self.active.as_mut()) {
            active.queue = Some(queue);
            active.broken = false;
        }
        self.serve();
    }

    fn backend_fds(&self) -> Vec<BackendFd> {
        self.more.backend_fd().into_iter().collect()
    }

    fn backend_event(&mut self, token: u64) {
        if token == MoreWork::TOKEN && self.active.is_some() {
            self.more.clear();
            self.serve();
        }
    }
}

#[cfg(test)]
mod tests;
