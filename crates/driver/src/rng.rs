//! Entropy device driver (virtio v1.4 §5.4 "Entropy Device"): one request
//! queue of device-writable buffers.

use vmmio_spec::device_id;

use crate::error::{Error, Result};
use crate::hal::{Dma, Hal, PAGE_SIZE};
use crate::io::RegisterIo;
use crate::queue::{Segment, VirtQueue};
use crate::transport::{InterruptEvents, Transport};

/// Default request queue size asked for, in entries.
pub const DEFAULT_QUEUE_SIZE: u16 = 8;

/// A virtio entropy device (device ID 4).
///
/// # Example
///
/// ```
/// # use vmmio_driver::{rng::Entropy, Hal, RegisterIo, Result, Transport};
/// fn seed<R: RegisterIo, H: Hal + Clone>(t: Transport<R>, hal: H) -> Result<[u8; 32]> {
///     let mut rng = Entropy::new(t, hal)?;
///     let mut seed = [0u8; 32];
///     rng.fill(&mut seed)?;
///     Ok(seed)
/// }
/// ```
pub struct Entropy<R: RegisterIo, H: Hal + Clone> {
    transport: Transport<R>,
    hal: H,
    queue: Option<VirtQueue<H>>,
    buf: Option<Dma<H>>,
    /// The chain in flight and the bytes it asked for.
    in_flight: Option<(u16, usize)>,
    broken: bool,
    /// Initialisation failed and FAILED was set: keep it visible.
    failed: bool,
}

impl<R: RegisterIo, H: Hal + Clone> core::fmt::Debug for Entropy<R, H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Entropy")
            .field("broken", &self.broken)
            .finish()
    }
}

impl<R: RegisterIo, H: Hal + Clone> Entropy<R, H> {
    /// Initialises the entropy device behind `transport` (virtio v1.4
    /// §3.1.1, §5.4.5): no device features, request queue 0.
    ///
    /// # Errors
    ///
    /// [`Error::WrongDeviceType`], and the errors of
    /// [`Transport::begin_init`], [`Transport::setup_queue`] and
    /// [`Transport::finish_init`] (FAILED is set after negotiation).
    pub fn new(transport: Transport<R>, hal: H) -> Result<Self> {
        if transport.device_id() != device_id::ENTROPY {
            return Err(Error::WrongDeviceType {
                expected: device_id::ENTROPY,
                found: transport.device_id(),
            });
        }
        let mut e = Self {
            transport,
            hal,
            queue: None,
            buf: None,
            in_flight: None,
            broken: true,
            failed: false,
        };
        e.init()?;
        Ok(e)
    }

    fn init(&mut self) -> Result<()> {
        self.broken = true;
        let r = (|| {
            self.transport.begin_init(0)?;
            self.buf = Some(Dma::new(self.hal.clone(), PAGE_SIZE)?);
            self.queue = Some(self.transport.setup_queue(
                self.hal.clone(),
                0,
                DEFAULT_QUEUE_SIZE,
            )?);
            self.transport.finish_init()
        })();
        self.failed = r.is_err();
        match r {
            Ok(()) => self.broken = false,
            Err(_) => self.transport.fail(),
        }
        r
    }

    /// Resets the device and initialises it again (after
    /// [`Error::DeviceNeedsReset`], a timeout or a device fault).
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new), and [`Error::Timeout`] for the reset.
    pub fn reinit(&mut self) -> Result<()> {
        self.broken = true;
        self.in_flight = None;
        let q = self.queue.take();
        if !self.transport.shutdown(q, true) {
            if let Some(b) = self.buf.take() {
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

    /// Acknowledges an interrupt ([`Transport::ack_interrupt`]).
    ///
    /// # Errors
    ///
    /// [`Error::DeviceNeedsReset`]; the driver is then broken until
    /// [`reinit`](Self::reinit).
    pub fn handle_interrupt(&mut self) -> Result<InterruptEvents> {
        self.transport
            .ack_interrupt()
            .inspect_err(|_| self.broken = true)
    }

    /// Asks the device for up to `min(out.len(), 4096)` random bytes and
    /// returns how many it wrote (the used `len`, which the driver
    /// examines as virtio v1.4 §5.4.6.1 requires; possibly 0). Only a
    /// device-writable buffer is posted.
    ///
    /// # Errors
    ///
    /// [`Error::Broken`] after an earlier fault, and the errors of
    /// [`Transport::wait_used`].
    pub fn read(&mut self, out: &mut [u8]) -> Result<usize> {
        if self.broken {
            return Err(Error::Broken);
        }
        if out.is_empty() {
            return Ok(0);
        }
        self.start(out.len())?;
        let (Some((token, _)), Some(q)) = (self.in_flight, self.queue.as_mut()) else {
            return Err(Error::Broken);
        };
        match self.transport.wait_used(q, token) {
            Ok(len) => self.finish(len, out),
            Err(e) => {
                // The chain may still be in flight: never reuse the page.
                self.broken = true;
                Err(e)
            }
        }
    }

    /// Starts a request for up to `min(len, 4096)` random bytes without
    /// waiting (`len` 0 asks for 1); [`poll`](Self::poll) completes it
    /// after the device's used-buffer interrupt. One request at a time.
    ///
    /// # Errors
    ///
    /// [`Error::Broken`], [`Error::WrongPhase`] while a request is in
    /// flight, and the errors of [`VirtQueue::add_segments`] and
    /// [`Transport::notify`].
    pub fn start(&mut self, len: usize) -> Result<()> {
        if self.broken {
            return Err(Error::Broken);
        }
        if self.in_flight.is_some() {
            return Err(Error::WrongPhase("an entropy request is already in flight"));
        }
        let n = len.clamp(1, PAGE_SIZE);
        let buf = self.buf.as_ref().ok_or(Error::Broken)?;
        let seg = Segment {
            addr: buf.paddr(),
            // n <= 4096.
            len: u32::try_from(n).unwrap_or(0),
        };
        let q = self.queue.as_mut().ok_or(Error::Broken)?;
        // SAFETY: the segment is this driver's DMA page, untouched until the
        // chain completes; on error `broken` stays set and `Drop` leaks the
        // page while the device may still write it.
        let token = unsafe { q.add_segments(&[], &[seg])? };
        self.broken = true;
        self.transport.notify_if_needed(q)?;
        self.broken = false;
        self.in_flight = Some((token, n));
        Ok(())
    }

    /// Completes the request [`start`](Self::start)ed, if the device has
    /// used it: `Ok(None)` while in flight (or none was started),
    /// `Ok(Some(n))` with the `n` bytes the device wrote copied to the
    /// front of `out` (as many as fit). Never waits.
    ///
    /// # Errors
    ///
    /// [`Error::Broken`], the used-ring errors of
    /// [`VirtQueue::pop_used`], [`Error::DeviceNeedsReset`].
    pub fn poll(&mut self, out: &mut [u8]) -> Result<Option<usize>> {
        if self.broken {
            return Err(Error::Broken);
        }
        let (Some((token, _)), Some(q)) = (self.in_flight, self.queue.as_mut()) else {
            return Ok(None);
        };
        let used = match q.pop_used_token(token) {
            Ok(Some(len)) => Ok(Some(len)),
            Ok(None) => self.transport.check_status().map(|_| None),
            Err(e) => Err(e),
        };
        match used {
            Ok(Some(len)) => self.finish(len, out).map(Some),
            Ok(None) => Ok(None),
            Err(e) => {
                self.broken = true;
                Err(e)
            }
        }
    }

    /// Copies what the device wrote (`len` bytes, clamped to the request)
    /// to `out` and returns the count copied.
    fn finish(&mut self, len: u32, out: &mut [u8]) -> Result<usize> {
        let (_, n) = self.in_flight.take().ok_or(Error::Broken)?;
        let buf = self.buf.as_ref().ok_or(Error::Broken)?;
        // `len <= n` was checked against the posted writable length.
        let got = usize::try_from(len).unwrap_or(0).min(n).min(out.len());
        buf.read_bytes(0, &mut out[..got])?;
        Ok(got)
    }

    /// Fills `out` completely, with as many requests as needed (at most
    /// `out.len()` + 16 of them, since a device may return few bytes).
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read), and [`Error::Timeout`] when the device
    /// keeps returning 0 bytes.
    pub fn fill(&mut self, out: &mut [u8]) -> Result<()> {
        let mut done = 0;
        let mut budget = out.len().saturating_add(16);
        while done < out.len() {
            if budget == 0 {
                return Err(Error::Timeout {
                    what: "the entropy device to return bytes",
                });
            }
            budget -= 1;
            done += self.read(&mut out[done..])?;
        }
        Ok(())
    }
}

impl<R: RegisterIo, H: Hal + Clone> Drop for Entropy<R, H> {
    fn drop(&mut self) {
        // As for the block driver: reset unless initialisation failed,
        // stop the queue, leak what the device may still use.
        let q = self.queue.take();
        if !self.transport.shutdown(q, !self.failed) {
            if let Some(b) = self.buf.take() {
                b.leak();
            }
        }
    }
}

#[cfg(feature = "std")]
impl<R: RegisterIo, H: Hal + Clone> std::io::Read for Entropy<R, H> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        Entropy::read(self, buf).map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripted::{rng_handler, ArenaHal, Scripted};
    use crate::IdentityHal;

    #[test]
    fn entropy_reads_what_the_device_wrote() {
        for version in [1, 2] {
            let mut s = Scripted::new(version, device_id::ENTROPY, 1, 8);
            s.handler = Some(rng_handler);
            let t = Transport::probe(&mut s).unwrap().unwrap();
            let mut e = Entropy::new(t, ArenaHal).unwrap();
            let mut buf = [0u8; 5000];
            assert_eq!(e.read(&mut buf).unwrap(), 4096);
            assert_eq!(buf[..3], [0x5a, 0x5b, 0x58]);
            e.fill(&mut buf).unwrap();
            assert_eq!(e.read(&mut []).unwrap(), 0);
        }
    }

    fn park(_: &mut Scripted, _: u32, _: &crate::scripted::Chain) -> Option<u32> {
        None
    }

    #[test]
    fn entropy_start_then_poll_completes_only_after_the_device_used_it() {
        let mut s = Scripted::new(2, device_id::ENTROPY, 1, 8);
        s.handler = Some(park);
        let t = Transport::probe(&mut s).unwrap().unwrap();
        let mut e = Entropy::new(t, IdentityHal).unwrap();
        let mut buf = [0u8; 8];
        e.start(3).unwrap();
        assert!(matches!(e.start(3), Err(Error::WrongPhase(_))));
        assert!(matches!(e.read(&mut buf), Err(Error::WrongPhase(_))));
        assert_eq!(e.poll(&mut buf), Ok(None));
        let io = e.transport().io_mut();
        io.handler = Some(rng_handler);
        io.retry_parked();
        assert_eq!(e.poll(&mut buf), Ok(Some(3)));
        assert_eq!(buf[..3], [0x5a, 0x5b, 0x58]);
        assert_eq!(e.poll(&mut buf), Ok(None));
        // A short `out` gets what fits.
        e.start(8).unwrap();
        assert_eq!(e.poll(&mut buf[..2]), Ok(Some(2)));
    }

    #[test]
    fn entropy_uses_the_used_length_and_is_bounded_on_zero() {
        let mut s = Scripted::new(2, device_id::ENTROPY, 1, 8);
        s.handler = Some(rng_handler);
        s.used_len_override = Some(3);
        let t = Transport::probe(&mut s).unwrap().unwrap();
        let mut e = Entropy::new(t, IdentityHal).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(e.read(&mut buf).unwrap(), 3);
        e.transport().io_mut().used_len_override = Some(0);
        assert!(matches!(e.fill(&mut buf), Err(Error::Timeout { .. })));
        // Only device-writable buffers were posted (virtio v1.4 §5.4.6.1).
        e.transport().io_mut().used_len_override = Some(17);
        assert!(matches!(
            e.read(&mut buf),
            Err(Error::UsedLenTooLarge { len: 17, .. })
        ));
    }

    #[test]
    fn entropy_interrupt_is_acknowledged_and_needs_reset_breaks_it() {
        let mut s = Scripted::new(2, device_id::ENTROPY, 1, 8);
        s.handler = Some(rng_handler);
        let t = Transport::probe(&mut s).unwrap().unwrap();
        let mut e = Entropy::new(t, IdentityHal).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(e.read(&mut buf).unwrap(), 4);
        assert_eq!(
            e.handle_interrupt().unwrap(),
            InterruptEvents {
                used_buffers: true,
                config_changed: false
            }
        );
        assert_eq!(e.transport().io_mut().acks, [vmmio_spec::mmio::INT_VRING]);
        let io = e.transport().io_mut();
        io.status |= vmmio_spec::status::DEVICE_NEEDS_RESET;
        io.interrupt_status |= vmmio_spec::mmio::INT_CONFIG;
        assert_eq!(e.handle_interrupt(), Err(Error::DeviceNeedsReset));
        assert_eq!(e.read(&mut buf), Err(Error::Broken));
        e.reinit().unwrap();
        assert_eq!(e.read(&mut buf).unwrap(), 4);
    }

    #[test]
    fn entropy_drop_resets_a_working_device_and_keeps_failed_visible() {
        let mut s = Scripted::new(2, device_id::ENTROPY, 1, 8);
        let e = Entropy::new(Transport::probe(&mut s).unwrap().unwrap(), IdentityHal).unwrap();
        drop(e);
        assert_eq!(s.status, 0);
        assert_eq!(s.queues[0].ready, 0);
        // Initialisation fails: the device keeps showing FAILED.
        let mut s = Scripted::new(2, device_id::ENTROPY, 1, 8);
        s.refuse_features = true;
        let t = Transport::probe(&mut s).unwrap().unwrap();
        assert!(Entropy::new(t, IdentityHal).is_err());
        assert_ne!(s.status & vmmio_spec::status::FAILED, 0);
    }

    #[cfg(feature = "std")]
    #[test]
    fn entropy_is_a_std_reader() {
        use std::io::Read;
        let mut s = Scripted::new(2, device_id::ENTROPY, 1, 8);
        s.handler = Some(rng_handler);
        let t = Transport::probe(&mut s).unwrap().unwrap();
        let mut e = Entropy::new(t, IdentityHal).unwrap();
        let mut buf = [0u8; 3];
        assert_eq!(Read::read(&mut e, &mut buf).unwrap(), 3);
        assert_eq!(buf, [0x5a, 0x5b, 0x58]);
        e.transport().io_mut().used_len_override = Some(17);
        let err = Read::read(&mut e, &mut buf).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::Other);
    }
}
