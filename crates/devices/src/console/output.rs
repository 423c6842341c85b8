//! Guest output on its way to a host sink that may block (a pipe nobody
//! drains, a stopped terminal, a slow socket).
//!
//! The device never writes to such a sink itself: it appends to a bounded
//! buffer ([`OUTPUT_BUFFER`] bytes) that a writer thread drains into the
//! sink. While the buffer lacks room for a whole transmit chain the device
//! leaves the chains in the ring (the guest waits, as on a slow line) and
//! lists an `EventFd` the writer signals once there is room again. So a
//! blocked sink never holds the device's lock: resets, configuration
//! accesses and input delivery go on.
//!
//! While the sink keeps up, the device still waits for its bytes to be
//! written (at most [`OUTPUT_WAIT`] per call), so guest output keeps its
//! order against other host output on the same stream (the machine's UART
//! on stdout); once a write took longer, the device stops waiting until
//! the sink moves again.
//!
//! Sinks that never block ([`Console::capture`](super::Console::capture))
//! are written in place, so their bytes are there when the chain is used.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;
use vmmio_device::BackendFd;

use super::{Output, MAX_TX_CHAIN_BYTES};
use crate::chain::LogLimiter;

/// Bytes of guest output waiting for a blocking sink, at most: two of the
/// longest transmit chains.
pub const OUTPUT_BUFFER: usize = 2 * MAX_TX_CHAIN_BYTES as usize;
/// Most bytes the writer thread takes out of the buffer per write.
const WRITE_CHUNK: usize = 64 * 1024;
/// Longest the device waits, per transmit, for its bytes to reach a sink
/// that keeps up.
pub const OUTPUT_WAIT: Duration = Duration::from_millis(100);
/// How long dropping the console waits for buffered output to reach the
/// sink (a sink still blocked then loses the rest).
pub const DRAIN_ON_DROP: Duration = Duration::from_secs(2);

/// Where transmitted bytes go.
pub(crate) enum Sink {
    /// A sink that never blocks, written in place.
    Direct(Output),
    /// A sink that may block, behind a writer thread.
    Queued(Queued),
}

impl Sink {
    /// A writer thread in front of `output`; written in place if the
    /// thread or its eventfd cannot be made (logged).
    pub(crate) fn queued(output: Output) -> Self {
        match Queued::start(output) {
            Ok(q) => Sink::Queued(q),
            Err((output, e)) => {
                log::warn!("virtio-console: no output thread ({e}): output may block the device");
                Sink::Direct(output)
            }
        }
    }

    /// Whether a whole transmit chain ([`MAX_TX_CHAIN_BYTES`]) fits now.
    /// When it does not, the writer wakes the device once it does.
    pub(crate) fn has_room_for_a_chain(&self) -> bool {
        match self {
            Sink::Direct(_) => true,
            Sink::Queued(q) => {
                let mut s = q.lock();
                let ok = OUTPUT_BUFFER - s.buf.len() >= MAX_TX_CHAIN_BYTES as usize;
                s.want_room |= !ok;
                ok
            }
        }
    }

    /// Outputs `data`: in place, or into the buffer (bytes beyond its room
    /// are dropped, which [`Sink::has_room_for_a_chain`] prevents for
    /// transmit chains).
    pub(crate) fn write(&mut self, data: &[u8], errors: &mut LogLimiter) {
        match self {
            Sink::Direct(out) => {
                if let Err(e) = out.write_all(data).and_then(|()| out.flush()) {
                    log::log!(errors.level(), "virtio-console: output failed: {e}");
                }
            }
            Sink::Queued(q) => {
                let mut s = q.lock();
                let room = OUTPUT_BUFFER - s.buf.len();
                if data.len() > room {
                    log::log!(
                        errors.level(),
                        "virtio-console: output buffer full, {} bytes dropped",
                        data.len() - room
                    );
                }
                let n = data.len().min(room);
                s.buf.extend(&data[..n]);
                s.pushed += n as u64;
                q.shared.cond.notify_all();
            }
        }
    }

    /// Waits until everything written so far reached the sink, at most
    /// [`OUTPUT_WAIT`], and not at all while an earlier wait timed out and
    /// the sink has not moved since.
    pub(crate) fn settle(&self) {
        let Sink::Queued(q) = self else {
            return;
        };
        let deadline = Instant::now() + OUTPUT_WAIT;
        let mut s = q.lock();
        while s.written != s.pushed && !s.stalled {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                s.stalled = true;
                return;
            }
            s = match q.shared.cond.wait_timeout(s, left) {
                Ok((s, _)) => s,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// The "room again" fd while the device waits for room.
    pub(crate) fn backend_fd(&self, token: u64) -> Option<BackendFd> {
        let Sink::Queued(q) = self else {
            return None;
        };
        let s = q.lock();
        (s.want_room || s.signalled).then(|| BackendFd {
            fd: q.room.as_raw_fd(),
            token,
            readable: true,
            writable: false,
        })
    }

    /// Drains the "room again" fd (non-blocking).
    pub(crate) fn clear_room_event(&self) {
        if let Sink::Queued(q) = self {
            let mut s = q.lock();
            s.signalled = false;
            // Nothing to read is fine: the fd is non-blocking.
            let _ = q.room.read();
        }
    }
}

/// The buffer and its writer thread.
pub(crate) struct Queued {
    shared: Arc<Shared>,
    /// Written by the writer when room came back for a waiting device.
    room: EventFd,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled on new bytes, on close, and when the writer went idle.
    cond: Condvar,
}

struct State {
    buf: VecDeque<u8>,
    /// The device stopped at a full buffer and waits for room.
    want_room: bool,
    /// The writer wrote the "room again" fd; the device has not drained it.
    signalled: bool,
    /// The writer is inside a write to the sink.
    writing: bool,
    /// Bytes appended to `buf` so far.
    pushed: u64,
    /// Bytes the writer has written (or dropped on a sink error) so far.
    written: u64,
    /// A [`Sink::settle`] timed out and the writer has not finished a write
    /// since.
    stalled: bool,
    /// The console is gone: the writer ends once the buffer is empty.
    closed: bool,
}

impl Queued {
    fn start(output: Output) -> Result<Self, (Output, std::io::Error)> {
        let room = match EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) {
            Ok(fd) => fd,
            Err(e) => return Err((output, e)),
        };
        let signal = match room.try_clone() {
            Ok(fd) => fd,
            Err(e) => return Err((output, e)),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buf: VecDeque::new(),
                want_room: false,
                signalled: false,
                writing: false,
                pushed: 0,
                written: 0,
                stalled: false,
                closed: false,
            }),
            cond: Condvar::new(),
        });
        // The thread owns the sink; if it cannot start, the sink comes
        // back through this slot.
        let slot = Arc::new(Mutex::new(Some(output)));
        let (s, taken) = (shared.clone(), slot.clone());
        let started = std::thread::Builder::new()
            .name("vmmio-console-out".into())
            .spawn(move || {
                if let Some(output) = lock(&taken).take() {
                    writer(&s, output, &signal);
                }
            });
        match started {
            Ok(_) => Ok(Self { shared, room }),
            Err(e) => match lock(&slot).take() {
                Some(output) => Err((output, e)),
                None => Ok(Self { shared, room }),
            },
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }
}

impl Drop for Queued {
    /// Lets the writer finish what is buffered, waiting at most
    /// [`DRAIN_ON_DROP`]; the thread ends on its own afterwards (a sink
    /// blocked for good keeps it, and the buffered rest, until it returns).
    fn drop(&mut self) {
        let deadline = Instant::now() + DRAIN_ON_DROP;
        let mut s = self.lock();
        s.closed = true;
        self.shared.cond.notify_all();
        while !s.buf.is_empty() || s.writing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                log::warn!(
                    "virtio-console: output sink blocked, {} buffered bytes dropped",
                    s.buf.len()
                );
                let n = s.buf.len() as u64;
                s.buf.clear();
                s.written += n;
                return;
            }
            s = match self.shared.cond.wait_timeout(s, left) {
                Ok((s, _)) => s,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The writer thread: buffer to sink until closed and empty.
fn writer(shared: &Shared, mut output: Output, room: &EventFd) {
    let mut chunk = Vec::with_capacity(WRITE_CHUNK);
    let mut errors = LogLimiter::default();
    loop {
        {
            let mut s = lock(&shared.state);
            if s.writing {
                s.writing = false;
                s.written += chunk.len() as u64;
                s.stalled = false;
            }
            shared.cond.notify_all();
            while s.buf.is_empty() && !s.closed {
                s = match shared.cond.wait(s) {
                    Ok(s) => s,
                    Err(p) => p.into_inner(),
                };
            }
            if s.buf.is_empty() {
                return;
            }
            let n = s.buf.len().min(WRITE_CHUNK);
            chunk.clear();
            chunk.extend(s.buf.drain(..n));
            s.writing = true;
            if s.want_room && OUTPUT_BUFFER - s.buf.len() >= MAX_TX_CHAIN_BYTES as usize {
                s.want_room = false;
                match room.write(1) {
                    Ok(()) => s.signalled = true,
                    Err(e) => log::error!("virtio-console: output eventfd write failed: {e}"),
                }
            }
        }
        if let Err(e) = output.write_all(&chunk).and_then(|()| output.flush()) {
            log::log!(errors.level(), "virtio-console: output failed: {e}");
        }
    }
}
