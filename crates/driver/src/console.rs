//! Console device driver, port 0 only (virtio v1.4 §5.3 "Console
//! Device"): bytes written go out on transmitq(port0) (queue 1); bytes
//! come in on receiveq(port0) (queue 0), where the driver keeps empty
//! buffers posted. VIRTIO_CONSOLE_F_MULTIPORT is never accepted.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use vmmio_spec::device_id;
use vmmio_spec::features::bit;

use crate::error::{Error, Result};
use crate::hal::{Dma, Hal, PAGE_SIZE};
use crate::io::RegisterIo;
use crate::queue::{Segment, VirtQueue};
use crate::transport::{InterruptEvents, Transport};

pub use vmmio_spec::console::{F_SIZE as VIRTIO_CONSOLE_F_SIZE, RECEIVEQ, TRANSMITQ};
/// Receive buffers kept posted (at most the queue size).
pub const RX_BUFFERS: usize = 8;
/// Bytes per receive buffer.
pub const RX_BUFFER_SIZE: usize = PAGE_SIZE / RX_BUFFERS;
/// [`RX_BUFFER_SIZE`] as a descriptor length.
const RX_BUFFER_LEN: u32 = 512;
const _: () = assert!(RX_BUFFER_LEN as usize == RX_BUFFER_SIZE);
/// Queue size asked for, in entries, for both queues.
pub const DEFAULT_QUEUE_SIZE: u16 = 16;
/// Received bytes buffered in the driver before receive buffers are left
/// un-reposted (back-pressure on the device), in bytes.
pub const MAX_PENDING: usize = 64 * 1024;

/// A virtio console (device ID 3), port 0.
///
/// # Example
///
/// ```
/// # use vmmio_driver::{console::Console, Hal, RegisterIo, Result, Transport};
/// fn hello<R: RegisterIo, H: Hal + Clone>(t: Transport<R>, hal: H) -> Result<()> {
///     let mut con = Console::new(t, hal)?;
///     con.write(b"hello\n")?;
///     let mut echo = [0u8; 64];
///     let n = con.read(&mut echo)?; // 0 when nothing arrived yet
///     log::info!("read {n} bytes");
///     Ok(())
/// }
/// ```
pub struct Console<R: RegisterIo, H: Hal + Clone> {
    transport: Transport<R>,
    hal: H,
    rxq: Option<VirtQueue<H>>,
    txq: Option<VirtQueue<H>>,
    rx_buf: Option<Dma<H>>,
    tx_buf: Option<Dma<H>>,
    /// The transmit chain in flight.
    tx_in_flight: Option<u16>,
    /// Receive buffer slot of each token in flight, by token.
    rx_slot: Vec<Option<usize>>,
    /// Slots not posted (back-pressure).
    idle_slots: Vec<usize>,
    pending: VecDeque<u8>,
    size: Option<(u16, u16)>,
    broken: bool,
    /// Initialisation failed and FAILED was set: keep it visible.
    failed: bool,
}

impl<R: RegisterIo, H: Hal + Clone> core::fmt::Debug for Console<R, H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Console")
            .field("pending", &self.pending.len())
            .field("size", &self.size)
            .field("broken", &self.broken)
            .finish()
    }
}

impl<R: RegisterIo, H: Hal + Clone> Console<R, H> {
    /// Initialises the console behind `transport` (virtio v1.4 §3.1.1,
    /// §5.3.5): accepts VIRTIO_CONSOLE_F_SIZE if offered, sets up
    /// receiveq(port0) and transmitq(port0), posts receive buffers, sets
    /// DRIVER_OK, then notifies the receive queue.
    ///
    /// # Errors
    ///
    /// [`Error::WrongDeviceType`], and the errors of
    /// [`Transport::begin_init`], [`Transport::setup_queue`],
    /// [`Transport::finish_init`] (FAILED is set after negotiation).
    pub fn new(transport: Transport<R>, hal: H) -> Result<Self> {
        if transport.device_id() != device_id::CONSOLE {
            return Err(Error::WrongDeviceType {
                expected: device_id::CONSOLE,
                found: transport.device_id(),
            });
        }
        let mut c = Self {
            transport,
            hal,
            rxq: None,
            txq: None,
            rx_buf: None,
            tx_buf: None,
            tx_in_flight: None,
            rx_slot: Vec::new(),
            idle_slots: Vec::new(),
            pending: VecDeque::new(),
            size: None,
            broken: true,
            failed: false,
        };
        c.init()?;
        Ok(c)
    }

    fn init(&mut self) -> Result<()> {
        self.broken = true;
        let r = self
            .transport
            .begin_init(bit(VIRTIO_CONSOLE_F_SIZE))
            .and_then(|_| self.init_after_features());
        self.failed = r.is_err();
        match r {
            Ok(()) => self.broken = false,
            Err(_) => self.transport.fail(),
        }
        r
    }

    fn init_after_features(&mut self) -> Result<()> {
        let t = &mut self.transport;
        self.size = if t.has_feature(VIRTIO_CONSOLE_F_SIZE) {
            Some(t.read_config_u16_pair(0, 2)?)
        } else {
            None
        };
        self.rx_buf = Some(Dma::new(self.hal.clone(), PAGE_SIZE)?);
        self.tx_buf = Some(Dma::new(self.hal.clone(), PAGE_SIZE)?);
        let rxq = t.setup_queue(self.hal.clone(), RECEIVEQ, DEFAULT_QUEUE_SIZE)?;
        self.rx_slot = Vec::new();
        self.rx_slot.resize(usize::from(rxq.size()), None);
        self.idle_slots = (0..RX_BUFFERS.min(usize::from(rxq.size()))).collect();
        self.rxq = Some(rxq);
        self.txq = Some(t.setup_queue(self.hal.clone(), TRANSMITQ, DEFAULT_QUEUE_SIZE)?);
        // Populate the receive queue before DRIVER_OK (virtio v1.4 §3.1.1
        // step 7); notify only after it (§3.1.1).
        self.post_idle()?;
        self.transport.finish_init()?;
        if let Some(q) = self.rxq.as_mut() {
            self.transport.notify(q)?;
        }
        Ok(())
    }

    /// Posts every idle receive slot. Returns how many were posted.
    fn post_idle(&mut self) -> Result<usize> {
        let (Some(q), Some(buf)) = (self.rxq.as_mut(), self.rx_buf.as_ref()) else {
            return Err(Error::Broken);
        };
        let mut posted = 0;
        while let Some(slot) = self.idle_slots.pop() {
            let seg = Segment {
                addr: buf.paddr() + (slot * RX_BUFFER_SIZE) as u64,
                len: RX_BUFFER_LEN,
            };
            // SAFETY: the slot is a disjoint part of this driver's receive
            // page, touched again only after its chain completes; the page
            // is leaked, not freed, if the device never stops.
            match unsafe { q.add_segments(&[], &[seg]) } {
                Ok(token) => {
                    self.rx_slot[usize::from(token)] = Some(slot);
                    posted += 1;
                }
                Err(e) => {
                    self.idle_slots.push(slot);
                    return Err(e);
                }
            }
        }
        Ok(posted)
    }

    /// Resets the device and initialises it again (after
    /// [`Error::DeviceNeedsReset`], a timeout or a device fault). Bytes
    /// already received and not read are kept.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new), and [`Error::Timeout`] for the reset.
    pub fn reinit(&mut self) -> Result<()> {
        self.broken = true;
        self.tx_in_flight = None;
        let queues = [self.rxq.take(), self.txq.take()].into_iter().flatten();
        if !self.transport.shutdown(queues, true) {
            for b in [self.rx_buf.take(), self.tx_buf.take()]
                .into_iter()
                .flatten()
            {
                b.leak();
            }
            return Err(Error::Timeout {
                what: "the device to stop",
            });
        }
        self.init()
    }

    /// The transport.
    pub fn transport(&mut self) -> &mut Transport<R> {
        &mut self.transport
    }

    /// Console size `(cols, rows)` when VIRTIO_CONSOLE_F_SIZE was
    /// negotiated: as read at initialisation or by the last
    /// [`refresh_size`](Self::refresh_size) (which
    /// [`handle_interrupt`](Self::handle_interrupt) calls on a
    /// configuration change).
    pub fn size(&self) -> Option<(u16, u16)> {
        self.size
    }

    /// Re-reads `cols` and `rows` as one consistent pair (virtio v1.4
    /// §5.3.4, §2.5.1); `None` without VIRTIO_CONSOLE_F_SIZE.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the config never reads consistently.
    pub fn refresh_size(&mut self) -> Result<Option<(u16, u16)>> {
        if self.transport.has_feature(VIRTIO_CONSOLE_F_SIZE) {
            self.size = Some(self.transport.read_config_u16_pair(0, 2)?);
        }
        Ok(self.size)
    }

    /// Handles an interrupt: acknowledges it, re-reads the size on a
    /// configuration change, then collects received bytes (used buffers of
    /// the receive queue).
    ///
    /// # Errors
    ///
    /// [`Error::DeviceNeedsReset`], and the used-ring errors of
    /// [`VirtQueue::pop_used`].
    pub fn handle_interrupt(&mut self) -> Result<InterruptEvents> {
        // DEVICE_NEEDS_RESET: broken until `reinit`.
        let ev = self
            .transport
            .ack_interrupt()
            .inspect_err(|_| self.broken = true)?;
        if ev.config_changed {
            self.refresh_size()?;
        }
        if ev.used_buffers {
            self.poll_rx()?;
        }
        Ok(ev)
    }

    /// Collects completed receive buffers into the driver's pending bytes
    /// and reposts them (at most one queue's worth per call).
    fn poll_rx(&mut self) -> Result<()> {
        if self.broken {
            return Err(Error::Broken);
        }
        let (Some(q), Some(buf)) = (self.rxq.as_mut(), self.rx_buf.as_ref()) else {
            return Err(Error::Broken);
        };
        for _ in 0..q.size() {
            let Some(used) = q.pop_used()? else { break };
            let Some(slot) = self.rx_slot[usize::from(used.token)].take() else {
                continue;
            };
            // `len <= RX_BUFFER_SIZE` was checked against the posted buffer.
            let n = usize::try_from(used.len).unwrap_or(0).min(RX_BUFFER_SIZE);
            let mut tmp = [0u8; RX_BUFFER_SIZE];
            buf.read_bytes(slot * RX_BUFFER_SIZE, &mut tmp[..n])?;
            self.pending.extend(&tmp[..n]);
            self.idle_slots.push(slot);
        }
        if self.pending.len() < MAX_PENDING && self.post_idle()? > 0 {
            if let Some(q) = self.rxq.as_mut() {
                self.transport.notify_if_needed(q)?;
            }
        }
        Ok(())
    }

    /// Copies received bytes into `out` and returns how many; 0 when none
    /// arrived. Never blocks.
    ///
    /// # Errors
    ///
    /// [`Error::Broken`], and the used-ring errors of
    /// [`VirtQueue::pop_used`].
    pub fn read(&mut self, out: &mut [u8]) -> Result<usize> {
        self.poll_rx()?;
        let n = out.len().min(self.pending.len());
        for (o, b) in out.iter_mut().zip(self.pending.drain(..n)) {
            *o = b;
        }
        Ok(n)
    }

    /// Sends `data` on port 0, in chunks of up to 4096 bytes, waiting for
    /// each to be used.
    ///
    /// # Errors
    ///
    /// [`Error::Broken`], and the errors of [`Transport::wait_used`].
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(PAGE_SIZE) {
            self.write_chunk(chunk)?;
        }
        Ok(())
    }

    fn write_chunk(&mut self, chunk: &[u8]) -> Result<()> {
        self.start_write(chunk)?;
        let (Some(token), Some(q)) = (self.tx_in_flight, self.txq.as_mut()) else {
            return Err(Error::Broken);
        };
        match self.transport.wait_used(q, token) {
            Ok(_) => {
                self.tx_in_flight = None;
                Ok(())
            }
            Err(e) => {
                // The chain may still be in flight: never reuse the page.
                self.broken = true;
                Err(e)
            }
        }
    }

    /// Starts sending `chunk` (at most 4096 bytes) on port 0 without
    /// waiting; [`poll_write`](Self::poll_write) completes it after the
    /// device's used-buffer interrupt. One chunk at a time.
    ///
    /// # Errors
    ///
    /// [`Error::Broken`], [`Error::WrongPhase`] while a chunk is in
    /// flight, [`Error::DmaOutOfBounds`] for more than 4096 bytes, and
    /// the errors of [`VirtQueue::add_segments`] and
    /// [`Transport::notify`].
    pub fn start_write(&mut self, chunk: &[u8]) -> Result<()> {
        if self.broken {
            return Err(Error::Broken);
        }
        if self.tx_in_flight.is_some() {
            return Err(Error::WrongPhase("a console write is already in flight"));
        }
        let (Some(q), Some(buf)) = (self.txq.as_mut(), self.tx_buf.as_mut()) else {
            return Err(Error::Broken);
        };
        buf.write_bytes(0, chunk)?;
        let seg = Segment {
            addr: buf.paddr(),
            // chunk.len() <= 4096 (write_bytes checked it).
            len: u32::try_from(chunk.len()).unwrap_or(0),
        };
        // SAFETY: the transmit page is this driver's, untouched until the
        // chain completes; on error `broken` stays set and `Drop` leaks it.
        let token = unsafe { q.add_segments(&[seg], &[])? };
        self.broken = true;
        self.transport.notify_if_needed(q)?;
        self.broken = false;
        self.tx_in_flight = Some(token);
        Ok(())
    }

    /// Completes the chunk [`start_write`](Self::start_write) sent, if the
    /// device has used it: `Ok(true)` when done (or none was in flight),
    /// `Ok(false)` while in flight. Never waits.
    ///
    /// # Errors
    ///
    /// [`Error::Broken`], the used-ring errors of
    /// [`VirtQueue::pop_used`], [`Error::DeviceNeedsReset`].
    pub fn poll_write(&mut self) -> Result<bool> {
        if self.broken {
            return Err(Error::Broken);
        }
        let (Some(token), Some(q)) = (self.tx_in_flight, self.txq.as_mut()) else {
            return Ok(true);
        };
        let done = match q.pop_used_token(token) {
            Ok(Some(_)) => Ok(true),
            Ok(None) => self.transport.check_status().map(|_| false),
            Err(e) => Err(e),
        };
        match done {
            Ok(true) => {
                self.tx_in_flight = None;
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => {
                self.broken = true;
                Err(e)
            }
        }
    }
}

impl<R: RegisterIo, H: Hal + Clone> Drop for Console<R, H> {
    fn drop(&mut self) {
        // As for the block driver: reset unless initialisation failed,
        // stop the queues, leak what the device may still use.
        let queues = [self.rxq.take(), self.txq.take()].into_iter().flatten();
        if !self.transport.shutdown(queues, !self.failed) {
            for b in [self.rx_buf.take(), self.tx_buf.take()]
                .into_iter()
                .flatten()
            {
                b.leak();
            }
        }
    }
}

#[cfg(feature = "std")]
impl<R: RegisterIo, H: Hal + Clone> std::io::Write for Console<R, H> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Console::write(self, buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripted::{console_handler, ArenaHal, Scripted};
    use crate::IdentityHal;

    fn run<H: Hal + Clone>(version: u32, hal: H) {
        let mut s = Scripted::new(version, device_id::CONSOLE, 2, 16);
        s.handler = Some(console_handler);
        s.device_features |= bit(VIRTIO_CONSOLE_F_SIZE) | bit(1);
        s.config = alloc::vec![80, 0, 25, 0, 0, 0, 0, 0];
        let t = Transport::probe(&mut s).unwrap().unwrap();
        let mut c = Console::new(t, hal).unwrap();
        assert_eq!(c.size(), Some((80, 25)));
        // MULTIPORT is never accepted.
        assert!(!c.transport().has_feature(1));
        let big: Vec<u8> = (0..5000u32).map(|i| i.to_le_bytes()[0]).collect();
        c.write(b"hello ").unwrap();
        c.write(&big).unwrap();
        let mut out = [0u8; 2000];
        assert_eq!(c.read(&mut out).unwrap(), 0);
        let io = c.transport().io_mut();
        io.console_in.extend(b"typed\n".iter());
        io.console_in.extend(core::iter::repeat_n(b'x', 1500));
        io.retry_parked();
        assert_eq!(c.read(&mut out[..3]).unwrap(), 3);
        let n = c.read(&mut out[3..]).unwrap();
        assert_eq!(&out[..6], b"typed\n");
        assert_eq!(n + 3, 1506);
        drop(c);
        assert_eq!(&s.console_out[..6], b"hello ");
        assert_eq!(s.console_out[6..], big[..]);
        // Receive buffers were notified only after DRIVER_OK.
        assert_eq!(s.notifications[0], u32::from(RECEIVEQ));
    }

    fn park(_: &mut Scripted, _: u32, _: &crate::scripted::Chain) -> Option<u32> {
        None
    }

    #[test]
    fn console_start_write_then_poll_completes_only_after_the_device_used_it() {
        let mut s = Scripted::new(2, device_id::CONSOLE, 2, 16);
        s.handler = Some(park);
        let t = Transport::probe(&mut s).unwrap().unwrap();
        let mut c = Console::new(t, IdentityHal).unwrap();
        c.start_write(b"irq").unwrap();
        assert!(matches!(c.start_write(b"x"), Err(Error::WrongPhase(_))));
        assert_eq!(c.poll_write(), Ok(false));
        let io = c.transport().io_mut();
        io.handler = Some(console_handler);
        io.retry_parked();
        assert_eq!(c.poll_write(), Ok(true));
        assert_eq!(c.poll_write(), Ok(true));
        c.write(b"!").unwrap();
        assert!(matches!(
            c.start_write(&[0; PAGE_SIZE + 1]),
            Err(Error::DmaOutOfBounds { .. })
        ));
        drop(c);
        assert_eq!(s.console_out, b"irq!");
    }

    #[test]
    fn console_write_and_read_port0() {
        run(2, IdentityHal);
        run(1, ArenaHal);
    }

    #[test]
    fn console_stops_reposting_receive_buffers_at_max_pending() {
        let mut s = Scripted::new(2, device_id::CONSOLE, 2, 16);
        s.handler = Some(console_handler);
        let t = Transport::probe(&mut s).unwrap().unwrap();
        let mut c = Console::new(t, IdentityHal).unwrap();
        let io = c.transport().io_mut();
        let notified = io.notifications.len();
        // Nothing received, nothing reposted: no notification either.
        assert_eq!(c.read(&mut []).unwrap(), 0);
        assert_eq!(c.transport().io_mut().notifications.len(), notified);
        let total = MAX_PENDING + 16 * 1024;
        let pattern = |i: usize| u8::try_from(i % 251).unwrap();
        let io = c.transport().io_mut();
        io.console_in.extend((0..total).map(pattern));
        io.retry_parked();
        // Each poll takes one queue's worth (8 x 512 bytes) and reposts
        // while fewer than MAX_PENDING bytes wait; the device fills the
        // reposted buffers at once.
        for _ in 0..(total / RX_BUFFER_SIZE) {
            assert_eq!(c.read(&mut []).unwrap(), 0);
        }
        // Back-pressure: exactly MAX_PENDING bytes taken, the rest still
        // in the device.
        assert_eq!(c.transport().io_mut().console_in.len(), total - MAX_PENDING);
        // Reading drains them in order, and receiving resumes.
        let mut out = alloc::vec![0u8; total];
        let mut got = 0;
        for _ in 0..64 {
            got += c.read(&mut out[got..]).unwrap();
        }
        assert_eq!(got, total);
        assert!(out.iter().enumerate().all(|(i, b)| *b == pattern(i)));
    }

    #[test]
    fn console_drop_resets_a_working_device_and_keeps_failed_visible() {
        let mut s = Scripted::new(2, device_id::CONSOLE, 2, 16);
        let c = Console::new(Transport::probe(&mut s).unwrap().unwrap(), IdentityHal).unwrap();
        drop(c);
        assert_eq!(s.status, 0);
        assert!(s.queues.iter().all(|q| q.ready == 0));
        let mut s = Scripted::new(2, device_id::CONSOLE, 2, 16);
        s.refuse_features = true;
        let t = Transport::probe(&mut s).unwrap().unwrap();
        assert!(Console::new(t, IdentityHal).is_err());
        assert_ne!(s.status & vmmio_spec::status::FAILED, 0);
    }

    #[cfg(feature = "std")]
    #[test]
    fn console_is_a_std_writer() {
        use std::io::Write;
        let mut s = Scripted::new(2, device_id::CONSOLE, 2, 16);
        s.handler = Some(console_handler);
        let t = Transport::probe(&mut s).unwrap().unwrap();
        let mut c = Console::new(t, IdentityHal).unwrap();
        assert_eq!(Write::write(&mut c, b"abc").unwrap(), 3);
        writeln!(c, "{}", 42).unwrap();
        c.flush().unwrap();
        drop(c);
        assert_eq!(s.console_out, b"abc42\n");
    }
}
