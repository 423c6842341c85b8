//! The virtio console device (virtio v1.4 §5.3 "Console Device"), one
//! port.
//!
//! Queues: `receiveq0` (index 0, host to guest) and `transmitq0` (index 1,
//! guest to host). Offered features: `VIRTIO_CONSOLE_F_SIZE` (`cols` and
//! `rows` are valid) and `VIRTIO_CONSOLE_F_EMERG_WRITE` (a write to
//! `emerg_wr` outputs its low byte at any time, even before the driver set
//! up anything), plus `VIRTIO_F_INDIRECT_DESC`, `VIRTIO_F_EVENT_IDX` and
//! `VIRTIO_F_RING_RESET`. `VIRTIO_CONSOLE_F_MULTIPORT` is not offered, so
//! the control queues and the multiport requirements do not apply.
//!
//! # Output and input
//! Transmitted bytes go to an output sink ([`std::io::Write`]): host
//! stdout ([`Console::stdio`]), a Unix socket ([`Console::unix_stream`]) or
//! a shared buffer ([`Console::capture`]). Input is pushed by the host with
//! [`Console::push_input`] or a [`ConsoleInput`] handle, from any thread;
//! [`Console::stdio`] and [`Console::unix_stream`] start a reader thread
//! that pushes what it reads. Pushed bytes are delivered into `receiveq0`
//! buffers at once when the driver has posted some, else kept (up to
//! [`MAX_PENDING_INPUT`] bytes) until it does.
//!
//! The device state sits behind a mutex shared with the input handles, so
//! input delivery and queue notifications never run at the same time.
//! Output that may block (stdout, a socket, any [`Console::new`] sink) is
//! written by a thread of its own through a bounded buffer (module
//! `output`, [`OUTPUT_BUFFER`] bytes): a host sink that stops reading only
//! makes the guest's transmit chains wait, it never blocks the device (a
//! reset, a configuration access, input delivery).

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use vm_memory::GuestMemory;
use vmmio_device::queue::Descriptor;
use vmmio_device::{
    ActivateError, BackendFd, DescriptorChain, InterruptStatus, LiveConfig, Queue, VirtioDevice,
};
use vmmio_spec::device_id;
use vmmio_spec::features::{bit, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_RESET};

use crate::chain::{ChainLayout, LogLimiter, MoreWork, Region, Served};
use output::Sink;
pub use output::{DRAIN_ON_DROP, OUTPUT_BUFFER, OUTPUT_WAIT};

mod output;

pub use vmmio_spec::console::{F_EMERG_WRITE, F_MULTIPORT, F_SIZE, RECEIVEQ, TRANSMITQ};

/// `QueueSizeMax` of both queues, in descriptors.
pub const QUEUE_SIZE: u16 = 256;

/// Size of `struct virtio_console_config` in bytes (§5.3.4).
pub const CONFIG_SIZE: usize = 12;
/// Byte offset of `emerg_wr` in the configuration space.
pub const EMERG_WR_OFFSET: u64 = 8;

/// Most input bytes kept while the driver has no receive buffer posted;
/// bytes pushed beyond this are dropped (and logged).
pub const MAX_PENDING_INPUT: usize = 64 * 1024;

/// Most bytes taken from one transmit chain. A driver chooses chain
/// lengths freely (descriptors may overlap), so one chain is capped; Linux
/// sends at most a page per buffer.
pub const MAX_TX_CHAIN_BYTES: u64 = 1 << 20;

/// Most bytes [`Console::capture`] keeps, in bytes (16 MiB).
pub const CAPTURE_LIMIT: usize = 16 << 20;

/// Size of the host buffer transmitted bytes are copied through, in bytes.
const TX_CHUNK: usize = 4096;

/// A sink for console output.
pub type Output = Box<dyn Write + Send>;

/// State between `activate` and `reset`.
struct Active<M> {
    mem: M,
    interrupt: InterruptStatus,
    /// `receiveq0` and `transmitq0`, `None` when not ready or reset.
    queues: [Option<Queue>; 2],
    /// A queue whose ring the driver broke; no longer served.
    broken: [bool; 2],
}

/// Everything behind the console's mutex.
struct Inner<M> {
    output: Sink,
    pending: VecDeque<u8>,
    tx_buf: Box<[u8; TX_CHUNK]>,
    active: Option<Active<M>>,
    /// Chain storage reused by every pop.
    chain: DescriptorChain,
    malformed: LogLimiter,
    dropped: LogLimiter,
    host_errors: LogLimiter,
    /// Rate limit of "driver broke the queue" (both queues, across resets).
    broken_log: LogLimiter,
    /// Wakes the device for chains left at the per-call cap.
    more: MoreWork,
}

/// A virtio console device (device ID 3) with one port.
pub struct Console<M> {
    inner: Arc<Mutex<Inner<M>>>,
    /// `struct virtio_console_config`, shared with [`ConsoleConfigHandle`]s.
    config: LiveConfig,
    queue_max_sizes: [u16; 2],
}

/// Changes a [`Console`]'s size (`cols`, `rows`) from the host, e.g. when
/// the host terminal is resized (`SIGWINCH`).
///
/// Cloneable, `Send` and `Sync`; works before, while and after the console
/// sits in a transport, from any thread. A change updates both fields as
/// one atomic step with respect to driver reads, increments
/// `ConfigGeneration` (Version 2 windows; the driver reads `cols` and
/// `rows` separately) and, while the device runs, raises the configuration
/// change notification (virtio v1.4 §2.5, §5.3.6 item 3).
#[derive(Clone, Debug)]
pub struct ConsoleConfigHandle {
    config: LiveConfig,
}

impl ConsoleConfigHandle {
    /// Sets `cols` and `rows` (character cells). The current size changes
    /// nothing.
    pub fn set_size(&self, cols: u16, rows: u16) {
        self.config.change(|bytes| put_size(bytes, cols, rows));
    }

    /// The current `(cols, rows)`.
    pub fn size(&self) -> (u16, u16) {
        size_of(&self.config)
    }
}

/// Writes `cols` and `rows` into a console configuration space.
fn put_size(bytes: &mut [u8], cols: u16, rows: u16) {
    if let Some(field) = bytes.get_mut(0..2) {
        field.copy_from_slice(&cols.to_le_bytes());
    }
    if let Some(field) = bytes.get_mut(2..4) {
        field.copy_from_slice(&rows.to_le_bytes());
    }
}

/// `(cols, rows)` of a console configuration space.
fn size_of(config: &LiveConfig) -> (u16, u16) {
    let mut size = [0u8; 4];
    config.read(0, &mut size);
    (
        u16::from_le_bytes([size[0], size[1]]),
        u16::from_le_bytes([size[2], size[3]]),
    )
}

/// The initial configuration space: `cols` x `rows`, one port.
fn initial_config(cols: u16, rows: u16) -> Vec<u8> {
    let mut c = vec![0u8; CONFIG_SIZE];
    put_size(&mut c, cols, rows);
    // max_nr_ports: only meaningful with MULTIPORT; one port here.
    c[4..8].copy_from_slice(&1u32.to_le_bytes());
    // emerg_wr (8..12) is write-only and reads 0.
    c
}

/// A handle that pushes input into a [`Console`] from any thread. Cheap to
/// clone; pushes after the console is dropped are ignored.
pub struct ConsoleInput<M> {
    inner: Weak<Mutex<Inner<M>>>,
}

impl<M> Clone for ConsoleInput<M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<M> fmt::Debug for ConsoleInput<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsoleInput").finish_non_exhaustive()
    }
}

impl<M> fmt::Debug for Console<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = lock(&self.inner);
        let (cols, rows) = size_of(&self.config);
        f.debug_struct("Console")
            .field("cols", &cols)
            .field("rows", &rows)
            .field("pending_input", &inner.pending.len())
            .field("active", &inner.active.is_some())
            .finish()
    }
}

/// Locks the state; a panic on another thread holding the lock does not
/// stop the console (the state stays consistent between statements).
fn lock<M>(m: &Mutex<Inner<M>>) -> MutexGuard<'_, Inner<M>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Token of the output's "room again" fd in `backend_fds`.
const ROOM_TOKEN: u64 = 0;

impl<M> Console<M> {
    /// A console writing to `output` through its own writer thread (see the
    /// module docs: `output` may block without blocking the device), with
    /// no input source (use [`Console::push_input`]) and a size of 80x25.
    pub fn new(output: Output) -> Self {
        Self::with_sink(Sink::queued(output))
    }

    fn with_sink(output: Sink) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                output,
                pending: VecDeque::new(),
                tx_buf: Box::new([0; TX_CHUNK]),
                active: None,
                chain: DescriptorChain::new(),
                malformed: LogLimiter::default(),
                dropped: LogLimiter::default(),
                host_errors: LogLimiter::default(),
                broken_log: LogLimiter::default(),
                more: MoreWork::default(),
            })),
            config: LiveConfig::new(initial_config(80, 25)),
            queue_max_sizes: [QUEUE_SIZE; 2],
        }
    }

    /// A console whose output is appended to a shared buffer, returned
    /// alongside (for tests and for hosts that show output themselves).
    ///
    /// The buffer holds at most [`CAPTURE_LIMIT`] bytes: the guest decides
    /// how much it transmits, so when a write would pass the limit the
    /// oldest bytes are dropped (the latest ones, at least half the limit,
    /// stay). See [`Console::capture_with_limit`].
    pub fn capture() -> (Self, Arc<Mutex<Vec<u8>>>) {
        Self::capture_with_limit(CAPTURE_LIMIT)
    }

    /// As [`Console::capture`], keeping at most `limit` bytes (at least 1).
    pub fn capture_with_limit(limit: usize) -> (Self, Arc<Mutex<Vec<u8>>>) {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let capture = Capture {
            buf: buf.clone(),
            limit: limit.max(1),
        };
        // In memory, never blocks: written in place, so the bytes are
        // there when the chain is used.
        (Self::with_sink(Sink::Direct(Box::new(capture))), buf)
    }

    /// Sets `cols` and `rows` (character cells) before the device runs;
    /// see [`Console::set_size`] for a running device.
    pub fn with_size(mut self, cols: u16, rows: u16) -> Self {
        self.config = LiveConfig::new(initial_config(cols, rows));
        self
    }

    /// A handle that changes the size from any thread while the console
    /// runs; see [`ConsoleConfigHandle`].
    pub fn config_handle(&self) -> ConsoleConfigHandle {
        ConsoleConfigHandle {
            config: self.config.clone(),
        }
    }

    /// Sets `QueueSizeMax` of both queues to `size` descriptors (default
    /// [`QUEUE_SIZE`]), clamped to 1..=32768.
    pub fn with_queue_size(mut self, size: u16) -> Self {
        self.queue_max_sizes = [size.clamp(1, 32768); 2];
        self
    }

    /// A handle that pushes input from another thread.
    pub fn input_handle(&self) -> ConsoleInput<M> {
        ConsoleInput {
            inner: Arc::downgrade(&self.inner),
        }
    }
}

impl<M: GuestMemory + Send + 'static> Console<M> {
    /// A console on the host's stdio: output to stdout, input from stdin
    /// read by a thread (which ends at end of file or when a read fails;
    /// after the console is dropped it ends at the next input).
    ///
    /// # Errors
    /// The host error if the reader thread cannot be started.
    pub fn stdio() -> io::Result<Self> {
        let console = Self::new(Box::new(io::stdout()));
        console.spawn_reader("vmmio-console-stdin", io::stdin())?;
        Ok(console)
    }

    /// A console on a connected Unix stream socket: output is written to
    /// it, input read from it by a thread (which ends at end of stream).
    ///
    /// # Errors
    /// The host error of duplicating the socket or starting the thread.
    pub fn unix_stream(stream: UnixStream) -> io::Result<Self> {
        let reader = stream.try_clone()?;
        let console = Self::new(Box::new(stream));
        console.spawn_reader("vmmio-console-socket", reader)?;
        Ok(console)
    }

    /// A console connected to the Unix socket listening at `path`; see
    /// [`Console::unix_stream`].
    ///
    /// # Errors
    /// The host error of `connect(2)`, or as [`Console::unix_stream`].
    pub fn connect_unix(path: impl AsRef<Path>) -> io::Result<Self> {
        Self::unix_stream(UnixStream::connect(path)?)
    }

    /// Starts a thread that reads `source` and pushes what it reads as
    /// input, until end of file, a read error, or a read that completes
    /// after the console was dropped.
    ///
    /// # Errors
    /// The host error if the thread cannot be started.
    pub fn spawn_reader<R: Read + Send + 'static>(
        &self,
        name: &str,
        mut source: R,
    ) -> io::Result<()> {
        let input = self.input_handle();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut buf = [0u8; 1024];
                loop {
                    match source.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if !input.push(&buf[..n]) {
                                break;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            log::warn!("virtio-console: input source failed: {e}");
                            break;
                        }
                    }
                }
            })?;
        Ok(())
    }
}

impl<M: GuestMemory> Console<M> {
    /// Queues `data` as input to the guest and delivers as much as the
    /// posted receive buffers hold, with one used-buffer interrupt. Bytes
    /// beyond [`MAX_PENDING_INPUT`] undelivered are dropped.
    pub fn push_input(&self, data: &[u8]) {
        lock(&self.inner).push(data);
    }

    /// Changes `cols` and `rows` as [`ConsoleConfigHandle::set_size`]
    /// does (`ConfigGeneration` changes; a running device sends a
    /// configuration change notification, §5.3.6 item 3).
    pub fn set_size(&self, cols: u16, rows: u16) {
        self.config_handle().set_size(cols, rows);
    }
}

impl<M: GuestMemory> ConsoleInput<M> {
    /// As [`Console::push_input`]. Returns false when the console is gone.
    pub fn push(&self, data: &[u8]) -> bool {
        match self.inner.upgrade() {
            Some(inner) => {
                lock(&inner).push(data);
                true
            }
            None => false,
        }
    }
}

impl<M: GuestMemory> Inner<M> {
    fn push(&mut self, data: &[u8]) {
        let room = MAX_PENDING_INPUT.saturating_sub(self.pending.len());
        if data.len() > room {
            log::log!(
                self.dropped.level(),
                "virtio-console: input buffer full, {} bytes dropped",
                data.len() - room
            );
        }
        self.pending.extend(&data[..data.len().min(room)]);
        self.deliver();
    }

    /// Moves pending input into posted `receiveq0` buffers, then notifies
    /// once if the driver wants it.
    fn deliver(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Some(queue) = active.queues[0].as_mut() else {
            return;
        };
        let mut rx = RxState {
            pending: &mut self.pending,
            malformed: &mut self.malformed,
        };
        Served {
            name: "virtio-console",
            queue,
            broken: &mut active.broken[0],
            mem: &active.mem,
            interrupt: &active.interrupt,
            chain: &mut self.chain,
            broken_log: &mut self.broken_log,
            more: &mut self.more,
        }
        .serve(
            &mut rx,
            |rx| !rx.pending.is_empty(),
            |rx, mem, descs| rx.fill(mem, descs),
        );
    }

    /// Writes every available `transmitq0` chain to the output, then
    /// notifies once if the driver wants it.
    fn transmit(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Some(queue) = active.queues[1].as_mut() else {
            return;
        };
        let mut tx = TxState {
            output: &mut self.output,
            buf: &mut self.tx_buf,
            malformed: &mut self.malformed,
            host_errors: &mut self.host_errors,
        };
        Served {
            name: "virtio-console",
            queue,
            broken: &mut active.broken[1],
            mem: &active.mem,
            interrupt: &active.interrupt,
            chain: &mut self.chain,
            broken_log: &mut self.broken_log,
            more: &mut self.more,
        }
        .serve(
            &mut tx,
            // Chains wait in the ring while a blocked sink's buffer is full.
            |tx| tx.output.has_room_for_a_chain(),
            |tx, mem, descs| {
                tx.send(mem, descs);
                // The device writes nothing into transmit buffers.
                0
            },
        );
        self.output.settle();
    }

    /// Handles a write of `data` at `offset` into the config space: the
    /// byte landing on `emerg_wr`'s low byte is output (§5.3.5.1); the rest
    /// is read-only and ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let Some(index) = EMERG_WR_OFFSET.checked_sub(offset) else {
            return;
        };
        let Some(&byte) = usize::try_from(index).ok().and_then(|i| data.get(i)) else {
            return;
        };
        self.output.write(&[byte], &mut self.host_errors);
        self.output.settle();
    }
}

/// What filling receive buffers needs.
struct RxState<'a> {
    pending: &'a mut VecDeque<u8>,
    malformed: &'a mut LogLimiter,
}

impl RxState<'_> {
    /// Fills the writable buffers of one receive chain from `pending` and
    /// returns the bytes written. A chain with a device-readable descriptor is
    /// malformed: it gets 0 and consumes no input.
    fn fill<M: GuestMemory>(&mut self, mem: &M, descs: &[Descriptor]) -> u32 {
        let RxState { pending, malformed } = self;
        let layout = match ChainLayout::split(descs) {
            Ok(l) if l.readable.is_empty() => l,
            Ok(_) => {
                log::log!(
                    malformed.level(),
                    "virtio-console: receive buffer with a device-readable part"
                );
                return 0;
            }
            Err(e) => {
                log::log!(malformed.level(), "virtio-console: malformed chain: {e}");
                return 0;
            }
        };
        let mut done = 0u64;
        // Pending input is at most MAX_PENDING_INPUT bytes, so `done` fits u32.
        let want = layout.writable_len.min(pending.len() as u64);
        for piece in Region::new(layout.writable, 0, want).pieces() {
            let (addr, len) = match piece {
                Ok(p) => p,
                Err(e) => {
                    log::log!(malformed.level(), "virtio-console: bad receive buffer: {e}");
                    break;
                }
            };
            // `len <= want <= pending.len()`.
            let (front, back) = pending.as_slices();
            let first = len.min(front.len());
            let second = len - first;
            let ok =
                vm_memory::Bytes::write_slice(mem, &front[..first], addr).and_then(|()| match addr
                    .0
                    .checked_add(first as u64)
                {
                    Some(a) if second > 0 => vm_memory::Bytes::write_slice(
                        mem,
                        &back[..second],
                        vm_memory::GuestAddress(a),
                    ),
                    Some(_) => Ok(()),
                    None => Err(vm_memory::GuestMemoryError::GuestAddressOverflow),
                });
            if let Err(e) = ok {
                log::log!(malformed.level(), "virtio-console: bad receive buffer: {e}");
                break;
            }
            pending.drain(..len);
            done += len as u64;
        }
        u32::try_from(done).unwrap_or(u32::MAX)
    }
}

/// What sending transmit buffers needs.
struct TxState<'a> {
    output: &'a mut Sink,
    buf: &'a mut [u8; TX_CHUNK],
    malformed: &'a mut LogLimiter,
    host_errors: &'a mut LogLimiter,
}

impl TxState<'_> {
    /// Copies the readable part of one transmit chain (at most
    /// [`MAX_TX_CHAIN_BYTES`]) to the output through the buffer.
    fn send<M: GuestMemory>(&mut self, mem: &M, descs: &[Descriptor]) {
        let TxState {
            output,
            buf,
            malformed,
            host_errors,
        } = self;
        let layout = match ChainLayout::split(descs) {
            Ok(l) => l,
            Err(e) => {
                log::log!(malformed.level(), "virtio-console: malformed chain: {e}");
                return;
            }
        };
        if layout.readable_len > MAX_TX_CHAIN_BYTES {
            log::log!(
                malformed.level(),
                "virtio-console: transmit chain of {} bytes cut to {MAX_TX_CHAIN_BYTES}",
                layout.readable_len
            );
        }
        let total = layout.readable_len.min(MAX_TX_CHAIN_BYTES);
        let mut off = 0u64;
        // At most MAX_TX_CHAIN_BYTES / TX_CHUNK rounds.
        while off < total {
            let n = (total - off).min(TX_CHUNK as u64);
            // `n <= TX_CHUNK`.
            let chunk = &mut buf[..n as usize];
            if let Err(e) = Region::new(layout.readable, off, n).read_into(mem, chunk) {
                log::log!(
                    malformed.level(),
                    "virtio-console: bad transmit buffer: {e}"
                );
                return;
            }
            output.write(chunk, host_errors);
            off += n;
        }
    }
}

/// An output sink appending to a shared buffer of at most `limit` bytes.
struct Capture {
    buf: Arc<Mutex<Vec<u8>>>,
    limit: usize,
}

impl Write for Capture {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut buf = self
            .buf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let taken = data.len();
        // Only the last `limit` bytes of `data` can stay.
        let data = &data[data.len().saturating_sub(self.limit)..];
        if buf.len() + data.len() > self.limit {
            // Drop down to half the limit at once, so that a flood costs
            // amortised O(1) per byte instead of a full move per write.
            let keep = (self.limit / 2).saturating_sub(data.len());
            let drop = buf.len().saturating_sub(keep);
            buf.drain(..drop);
        }
        buf.extend_from_slice(data);
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<M: GuestMemory + Send> VirtioDevice<M> for Console<M> {
    fn device_type(&self) -> u32 {
        device_id::CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn device_features(&self) -> u64 {
        bit(F_SIZE)
            | bit(F_EMERG_WRITE)
            | bit(VIRTIO_F_INDIRECT_DESC)
            | bit(VIRTIO_F_EVENT_IDX)
            | bit(VIRTIO_F_RING_RESET)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_generation(&self) -> u32 {
        self.config.generation()
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        lock(&self.inner).write_config(offset, data);
    }

    fn activate(
        &mut self,
        mem: M,
        interrupt: InterruptStatus,
        queues: Vec<Queue>,
        _features: u64,
    ) -> Result<(), ActivateError> {
        let mut it = queues.into_iter().map(|q| q.ready().then_some(q));
        let rx = it.next().flatten();
        let tx = it.next().flatten();
        let mut inner = lock(&self.inner);
        inner.more.open()?;
        self.config.activate(interrupt.clone());
        inner.active = Some(Active {
            mem,
            interrupt,
            queues: [rx, tx],
            broken: [false; 2],
        });
        inner.transmit();
        inner.deliver();
        Ok(())
    }

    fn queue_notify(
        &mut self,
        index: u16,
        _data: Option<vmmio_spec::notification::NotificationData>,
    ) {
        let mut inner = lock(&self.inner);
        match index {
            RECEIVEQ => inner.deliver(),
            TRANSMITQ => inner.transmit(),
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.config.deactivate();
        // Pending input stays for the next driver.
        let mut inner = lock(&self.inner);
        inner.active = None;
        inner.more.clear();
    }

    fn queue_reset(&mut self, index: u16) {
        let mut inner = lock(&self.inner);
        if let Some(active) = inner.active.as_mut() {
            if let Some(slot) = active.queues.get_mut(usize::from(index)) {
                *slot = None;
                active.broken[usize::from(index)] = false;
            }
        }
    }

    fn queue_enable(&mut self, index: u16, queue: Queue) {
        let mut inner = lock(&self.inner);
        if let Some(active) = inner.active.as_mut() {
            if let Some(slot) = active.queues.get_mut(usize::from(index)) {
                *slot = Some(queue);
                active.broken[usize::from(index)] = false;
            }
        }
        match index {
            RECEIVEQ => inner.deliver(),
            TRANSMITQ => inner.transmit(),
            _ => {}
        }
    }

    fn backend_fds(&self) -> Vec<BackendFd> {
        let inner = lock(&self.inner);
        if inner.active.is_none() {
            return Vec::new();
        }
        let mut fds: Vec<BackendFd> = inner.more.backend_fd().into_iter().collect();
        fds.extend(inner.output.backend_fd(ROOM_TOKEN));
        fds
    }

    fn backend_event(&mut self, token: u64) {
        let mut inner = lock(&self.inner);
        if inner.active.is_none() {
            return;
        }
        match token {
            MoreWork::TOKEN => {
                inner.more.clear();
                inner.transmit();
                inner.deliver();
            }
            ROOM_TOKEN => {
                inner.output.clear_room_event();
                inner.transmit();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
