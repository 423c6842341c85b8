//! Several zero-copy block requests in flight at once (virtio v1.4
//! §5.2.6): [`Block::submit_dma`] / [`Block::submit_flush`] hand a
//! request to the device and return at once with a [`Token`];
//! [`Block::complete`] returns finished requests, in the order the device
//! used them (not necessarily the submission order), with the caller's
//! buffer.
//!
//! Each request has its own header/status DMA (from a small pool), and the
//! data segment is the caller's own [`Dma`] buffer: no bounce copy.

use alloc::vec::Vec;

use super::{
    check_completion, encode_header, Block, STATUS_OFF, STATUS_UNSET, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use crate::error::{Error, Result};
use crate::hal::{Dma, Hal};
use crate::io::RegisterIo;
use crate::queue::Segment;
use crate::transport::Version;

/// Largest data transfer of one queued zero-copy request, in bytes (one
/// segment; VIRTIO_BLK_F_SIZE_MAX is not negotiated).
pub use super::MAX_DMA_TRANSFER as MAX_QUEUED_TRANSFER;

/// Bytes of a request's header/status buffer: the 16-byte header, then
/// the status byte.
const HDR_BYTES: usize = STATUS_OFF + 1;

/// The data direction of a queued zero-copy request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaOp {
    /// `VIRTIO_BLK_T_IN`: the device writes the caller's buffer.
    Read,
    /// `VIRTIO_BLK_T_OUT`: the device reads the caller's buffer.
    Write,
}

/// Names one request in flight, from its submission to its
/// [`Completion`]. Unique among the requests in flight; reused afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token(pub u16);

/// A finished request ([`Block::complete`]).
pub struct Completion<H: Hal> {
    /// The token [`Block::submit_dma`] / [`Block::submit_flush`] returned.
    pub token: Token,
    /// `Ok(())`, or the device's answer as an error:
    /// [`Error::BlockStatus`] (IOERR, UNSUPP, or an unknown status),
    /// [`Error::ShortCompletion`] (the used `len` does not cover the data
    /// and the status byte; ignored for legacy devices, §2.7.8.3).
    pub result: Result<()>,
    /// The caller's buffer, back from the device (`None` for a flush). For
    /// a successful read its first `len` bytes hold the data.
    pub buf: Option<Dma<H>>,
}

/// A request [`Block::submit_dma`] refused.
pub struct Rejected<H: Hal> {
    /// Why.
    pub error: Error,
    /// The caller's buffer when nothing reached the device; `None` when
    /// the request may be in flight (a notify failure): the driver then
    /// keeps the buffer until the device is reset ([`Block::reinit`] or
    /// drop).
    pub buf: Option<Dma<H>>,
}

// By hand: a derive would ask `H: Debug`, which `Dma<H>` does not need.
impl<H: Hal> core::fmt::Debug for Completion<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Completion")
            .field("token", &self.token)
            .field("result", &self.result)
            .field("buf", &self.buf)
            .finish()
    }
}

impl<H: Hal> core::fmt::Debug for Rejected<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Rejected")
            .field("error", &self.error)
            .field("buf", &self.buf)
            .finish()
    }
}

impl<H: Hal> From<Rejected<H>> for Error {
    fn from(r: Rejected<H>) -> Self {
        r.error
    }
}

/// A queued request the device holds.
pub(super) struct Queued<H: Hal> {
    /// The chain's head (the queue's token).
    chain: u16,
    /// Header and status.
    hdr: Dma<H>,
    /// The caller's data buffer.
    buf: Option<Dma<H>>,
    /// Bytes the device writes before the status byte.
    data_in: usize,
}

impl<H: Hal> Queued<H> {
    /// The DMA memory of the request, for orphaning or leaking.
    pub(super) fn into_dma(self) -> impl Iterator<Item = Dma<H>> {
        core::iter::once(self.hdr).chain(self.buf)
    }
}

impl<R: RegisterIo, H: Hal + Clone> Block<R, H> {
    /// Submits a zero-copy read or write of `len` bytes (a multiple of
    /// 512, at most `buf.len()` and [`MAX_QUEUED_TRANSFER`]) at `sector`
    /// (512-byte units), its data segment being bytes `0..len` of the
    /// caller's DMA buffer `buf` (guest-physical address `buf.paddr()`),
    /// and returns without waiting. Any number of requests may be in
    /// flight, up to what the request queue holds (3 descriptors each, 1
    /// with VIRTIO_F_INDIRECT_DESC). Finish them with
    /// [`complete`](Self::complete), e.g. after
    /// [`handle_interrupt`](Self::handle_interrupt) reported used buffers.
    ///
    /// Not to be mixed with [`start`](Self::start) or the blocking calls:
    /// each refuses with [`Error::WrongPhase`] while the other has a
    /// request in flight.
    ///
    /// # Errors
    ///
    /// With the buffer handed back (nothing sent): [`Error::Broken`],
    /// [`Error::WrongPhase`], [`Error::ReadOnly`] (write),
    /// [`Error::DmaOutOfBounds`] (`len > buf.len()`),
    /// [`Error::UnalignedLength`] (also for `len == 0`),
    /// [`Error::ChainTooLong`], [`Error::OutOfRange`],
    /// [`Error::QueueFull`], [`Error::DmaAlloc`]. Without it (the request
    /// may be in flight; the driver keeps the buffer until reset): the
    /// errors of [`Transport::notify`](crate::Transport::notify).
    pub fn submit_dma(
        &mut self,
        op: DmaOp,
        sector: u64,
        buf: Dma<H>,
        len: usize,
    ) -> core::result::Result<Token, Rejected<H>> {
        let check = || -> Result<Segment> {
            if op == DmaOp::Write && self.read_only {
                return Err(Error::ReadOnly);
            }
            if len > buf.len() {
                return Err(Error::DmaOutOfBounds {
                    offset: 0,
                    len,
                    size: buf.len(),
                });
            }
            if len == 0 {
                return Err(Error::UnalignedLength(0));
            }
            if len > MAX_QUEUED_TRANSFER {
                return Err(Error::ChainTooLong(len as u64));
            }
            self.check_range(sector, len)?;
            Ok(Segment {
                addr: buf.paddr(),
                len: u32::try_from(len).map_err(|_| Error::ChainTooLong(len as u64))?,
            })
        };
        let seg = match check() {
            Ok(s) => s,
            Err(error) => {
                return Err(Rejected {
                    error,
                    buf: Some(buf),
                })
            }
        };
        let kind = match op {
            DmaOp::Read => VIRTIO_BLK_T_IN,
            DmaOp::Write => VIRTIO_BLK_T_OUT,
        };
        self.submit_queued(kind, sector, Some((seg, buf)))
    }

    /// Submits a flush of the write cache (`VIRTIO_BLK_T_FLUSH`) without
    /// waiting; its [`Completion`] has no buffer. Requests completed
    /// before the flush was submitted are on stable storage once it
    /// completes (virtio v1.4 §5.2.6).
    ///
    /// # Errors
    ///
    /// [`Error::FeatureNotNegotiated`] without VIRTIO_BLK_F_FLUSH; then as
    /// [`submit_dma`](Self::submit_dma).
    pub fn submit_flush(&mut self) -> Result<Token> {
        if !self.flush {
            return Err(Error::FeatureNotNegotiated(VIRTIO_BLK_F_FLUSH));
        }
        Ok(self.submit_queued(VIRTIO_BLK_T_FLUSH, 0, None)?)
    }

    fn submit_queued(
        &mut self,
        kind: u32,
        sector: u64,
        data: Option<(Segment, Dma<H>)>,
    ) -> core::result::Result<Token, Rejected<H>> {
        let (seg, buf) = match data {
            Some((s, b)) => (Some(s), Some(b)),
            None => (None, None),
        };
        let reject = |error, buf| Err(Rejected { error, buf });
        if self.broken {
            return reject(Error::Broken, buf);
        }
        if self.in_flight.is_some() {
            return reject(
                Error::WrongPhase("a single block request (start) is in flight"),
                buf,
            );
        }
        let mut hdr = match self.hdr_pool.pop() {
            Some(h) => h,
            None => match Dma::new(self.hal.clone(), HDR_BYTES) {
                Ok(h) => h,
                Err(e) => return reject(e, buf),
            },
        };
        let legacy = self.transport.version() == Version::Legacy;
        if let Err(e) = hdr.write_bytes(0, &encode_header(legacy, kind, sector)) {
            return reject(e, buf);
        }
        let head = Segment {
            addr: hdr.paddr(),
            len: 16,
        };
        let status = Segment {
            addr: hdr.paddr() + STATUS_OFF as u64,
            len: 1,
        };
        let (readable, writable, data_in): (&[Segment], &[Segment], usize) = match (kind, &seg) {
            (VIRTIO_BLK_T_IN, Some(d)) => (&[head], &[*d, status], d.len as usize),
            (_, Some(d)) => (&[head, *d], &[status], 0),
            (_, None) => (&[head], &[status], 0),
        };
        let Some(q) = self.queue.as_mut() else {
            return reject(Error::Broken, buf);
        };
        // SAFETY: the segments lie in `hdr` (driver-owned) and the
        // caller's `buf`, both moved into `self.queued` below and neither
        // touched nor freed until the chain is used, or the device reset
        // (`reinit`, `Drop`), or leaked if the device never stops.
        let chain = match unsafe { q.add_segments(readable, writable) } {
            Ok(c) => c,
            Err(e) => {
                self.hdr_pool.push(hdr);
                return reject(e, buf);
            }
        };
        self.queued.push(Queued {
            chain,
            hdr,
            buf,
            data_in,
        });
        if let Err(error) = self.transport.notify_if_needed(q) {
            // The chain may be in flight: its memory stays in `queued`.
            self.broken = true;
            return Err(Rejected { error, buf: None });
        }
        Ok(Token(chain))
    }

    /// Completes the next request the device has used, if any: `Ok(None)`
    /// when none is done yet (or none is in flight). Never waits.
    ///
    /// # Errors
    ///
    /// [`Error::Broken`] after an earlier fault; a device fault:
    /// [`Error::DeviceNeedsReset`], and the used-ring errors of
    /// [`VirtQueue::pop_used`](crate::VirtQueue::pop_used) (a used id not
    /// in flight, a used `len` above the chain's writable bytes, ...).
    /// After a fault every buffer still in flight stays with the driver
    /// until [`reinit`](Self::reinit) (or drop) resets the device.
    pub fn complete(&mut self) -> Result<Option<Completion<H>>> {
        if self.broken {
            return Err(Error::Broken);
        }
        let Some(q) = self.queue.as_mut() else {
            return Err(Error::Broken);
        };
        let used = match q.pop_used() {
            Ok(Some(u)) => u,
            Ok(None) => {
                return match self.transport.check_status() {
                    Ok(_) => Ok(None),
                    Err(e) => {
                        self.broken = true;
                        Err(e)
                    }
                }
            }
            Err(e) => {
                self.broken = true;
                return Err(e);
            }
        };
        let Some(i) = self.queued.iter().position(|r| r.chain == used.token) else {
            // The queue knew the chain but we do not: not ours to free.
            self.broken = true;
            return Err(Error::UsedIdNotInFlight {
                queue: 0,
                id: u32::from(used.token),
            });
        };
        let r = self.queued.swap_remove(i);
        let mut st = [STATUS_UNSET];
        let legacy = self.transport.version() == Version::Legacy;
        let result = r
            .hdr
            .read_bytes(STATUS_OFF, &mut st)
            .and_then(|()| check_completion(legacy, st[0], used.len, r.data_in));
        self.hdr_pool.push(r.hdr);
        Ok(Some(Completion {
            token: Token(used.token),
            result,
            buf: r.buf,
        }))
    }

    /// How many requests of [`submit_dma`](Self::submit_dma) /
    /// [`submit_flush`](Self::submit_flush) await [`complete`](Self::complete).
    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    /// Moves every queued request's memory to `orphans` (before a reset).
    pub(super) fn orphan_queued(&mut self) {
        let q: Vec<Queued<H>> = self.queued.drain(..).collect();
        for r in q {
            self.orphans.extend(r.into_dma());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::cast_possible_truncation)]
    use super::*;
    use crate::scripted::{blk_handler, ArenaHal, Chain, Scripted};
    use crate::transport::Transport;
    use crate::IdentityHal;
    use alloc::vec;
    use alloc::vec::Vec;
    use vmmio_spec::device_id;
    use vmmio_spec::features::bit;

    use super::super::{VIRTIO_BLK_F_RO, VIRTIO_BLK_S_IOERR};

    const SECTORS: usize = 64;

    fn device(features: u64) -> Scripted {
        let mut s = Scripted::new(2, device_id::BLOCK, 1, 64);
        s.device_features |= features | bit(VIRTIO_BLK_F_FLUSH);
        s.handler = Some(blk_handler);
        s.disk = (0..SECTORS * 512).map(|i| (i % 251) as u8).collect();
        s.config = vec![0; 64];
        s.config[..8].copy_from_slice(&(SECTORS as u64).to_le_bytes());
        s
    }

    fn park(_: &mut Scripted, _: u32, _: &Chain) -> Option<u32> {
        None
    }

    fn dma(len: usize) -> Dma<IdentityHal> {
        Dma::new(IdentityHal, len).unwrap()
    }

    #[test]
    fn eight_reads_in_flight_complete_out_of_order_with_their_tokens() {
        let mut s = device(0);
        s.handler = Some(park);
        let t = Transport::probe(&mut s).unwrap().unwrap();
        let mut b = Block::new(t, IdentityHal).unwrap();
        let mut tokens = Vec::new();
        for i in 0..8u64 {
            let tok = b
                .submit_dma(DmaOp::Read, i * 2, dma(1024), 1024)
                .expect("a second request while the first is in flight");
            tokens.push((tok, i * 2));
        }
        assert_eq!(b.queued(), 8);
        assert!(b.complete().unwrap().is_none());
        // The device finishes them last first.
        let io = b.transport().io_mut();
        io.handler = Some(blk_handler);
        io.parked.reverse();
        io.retry_parked();
        for (tok, sector) in tokens.iter().rev() {
            let c = b.complete().unwrap().expect("a completion");
            assert_eq!(c.token, *tok);
            c.result.unwrap();
            let mut got = [0u8; 1024];
            c.buf.unwrap().read_bytes(0, &mut got).unwrap();
            let base = *sector as usize * 512;
            assert!(got
                .iter()
                .enumerate()
                .all(|(i, &v)| v == ((base + i) % 251) as u8));
        }
        assert!(b.complete().unwrap().is_none());
        assert_eq!(b.queued(), 0);
    }

    #[test]
    fn legacy_device_gets_guest_native_headers() {
        let mut s = device(0);
        s.version = 1;
        s.device_features &= !(1 << 32);
        let t = Transport::probe(&mut s).unwrap().unwrap();
        let mut b = Block::new(t, ArenaHal).unwrap();
        let mut w = Dma::new(ArenaHal, 512).unwrap();
        w.write_bytes(0, &[0x77; 512]).unwrap();
        let wt = b.submit_dma(DmaOp::Write, 5, w, 512).unwrap();
        let rt = b
            .submit_dma(DmaOp::Read, 3, Dma::new(ArenaHal, 512).unwrap(), 512)
            .unwrap();
        let mut seen = 0;
        while let Some(c) = b.complete().unwrap() {
            c.result.unwrap();
            if c.token == rt {
                let mut got = [0u8; 512];
                c.buf.unwrap().read_bytes(0, &mut got).unwrap();
                assert_eq!(got[..], s_disk_pattern(3)[..]);
            } else {
                assert_eq!(c.token, wt);
            }
            seen += 1;
        }
        assert_eq!(seen, 2);
        drop(b);
        assert_eq!(s.disk[5 * 512..6 * 512], [0x77; 512]);
    }

    /// The initial bytes of `sector` on [`device`]'s disk.
    fn s_disk_pattern(sector: usize) -> Vec<u8> {
        (sector * 512..(sector + 1) * 512)
            .map(|i| (i % 251) as u8)
            .collect()
    }

    #[test]
    fn writes_and_flush_queued_land_on_the_disk() {
        let mut s = device(0);
        let t = Transport::probe(&mut s).unwrap().unwrap();
        let mut b = Block::new(t, IdentityHal).unwrap();
        let mut toks = Vec::new();
        for i in 0..4u8 {
            let mut d = dma(512);
            d.write_bytes(0, &[i + 1; 512]).unwrap();
            toks.push(b.submit_dma(DmaOp::Write, u64::from(i), d, 512).unwrap());
        }
        toks.push(b.submit_flush().unwrap());
        let mut done = Vec::new();
        while let Some(c) = b.complete().unwrap() {
            c.result.unwrap();
            assert_eq!(c.buf.is_none(), c.token == toks[4]);
            done.push(c.token);
        }
        done.sort();
        toks.sort();
        assert_eq!(done, toks);
        drop(b);
        for i in 0..4 {
            assert_eq!(s.disk[i * 512..(i + 1) * 512], [i as u8 + 1; 512]);
        }
    }

    /// The error of a refused request, checking the buffer came back.
    #[track_caller]
    fn refused(r: core::result::Result<Token, Rejected<IdentityHal>>) -> Error {
        let r = r.unwrap_err();
        assert!(r.buf.is_some(), "buffer kept for {:?}", r.error);
        r.error
    }

    #[test]
    fn queue_full_and_invalid_requests_hand_the_buffer_back() {
        let mut s = device(bit(VIRTIO_BLK_F_RO));
        s.handler = Some(park);
        let t = Transport::probe(&mut s).unwrap().unwrap();
        // 8 entries, 3 descriptors per request: two fit.
        let mut b = Block::with_queue_size(t, IdentityHal, 8).unwrap();
        assert!(b.read_only());
        assert_eq!(b.capacity(), SECTORS as u64);
        assert_eq!(
            refused(b.submit_dma(DmaOp::Write, 0, dma(512), 512)),
            Error::ReadOnly
        );
        let small = dma(512);
        let size = small.len();
        assert_eq!(
            refused(b.submit_dma(DmaOp::Read, 0, small, size + 512)),
            Error::DmaOutOfBounds {
                offset: 0,
                len: size + 512,
                size
            }
        );
        assert_eq!(
            refused(b.submit_dma(DmaOp::Read, 0, dma(512), 100)),
            Error::UnalignedLength(100)
        );
        assert_eq!(
            refused(b.submit_dma(DmaOp::Read, 0, dma(512), 0)),
            Error::UnalignedLength(0)
        );
        assert_eq!(
            refused(b.submit_dma(DmaOp::Read, SECTORS as u64, dma(512), 512)),
            Error::OutOfRange {
                sector: SECTORS as u64,
                sectors: 1,
                capacity: SECTORS as u64
            }
        );
        let big = MAX_QUEUED_TRANSFER + 512;
        assert_eq!(
            refused(b.submit_dma(DmaOp::Read, 0, dma(big), big)),
            Error::ChainTooLong(big as u64)
        );
        b.submit_dma(DmaOp::Read, 0, dma(512), 512).unwrap();
        b.submit_dma(DmaOp::Read, 1, dma(512), 512).unwrap();
        assert_eq!(
            refused(b.submit_dma(DmaOp::Read, 2, dma(512), 512)),
            Error::QueueFull { needed: 3, free: 2 }
        );
        // Mixing with the single-request API is refused both ways.
        let mut one = [0u8; 512];
        assert!(matches!(
            b.read_blocks(0, &mut one),
            Err(Error::WrongPhase(_))
        ));
        let io = b.transport().io_mut();
        io.handler = Some(blk_handler);
        io.retry_parked();
        assert!(b.complete().unwrap().is_some());
        assert!(b.complete().unwrap().is_some());
        b.start(super::super::Request::Read {
            sector: 0,
            len: 512,
        })
        .unwrap();
        assert!(matches!(
            refused(b.submit_dma(DmaOp::Read, 0, dma(512), 512)),
            Error::WrongPhase(_)
        ));
        assert_eq!(b.poll(&mut one), Ok(Some(512)));
    }

    #[test]
    fn hostile_used_entries_are_errors_and_reinit_recovers() {
        let mut s = device(0);
        let t = Transport::probe(&mut s).unwrap().unwrap();
        let mut b = Block::new(t, IdentityHal).unwrap();
        // A used id that heads no chain in flight.
        b.transport().io_mut().used_id_override = Some(7);
        b.submit_dma(DmaOp::Read, 0, dma(512), 512).unwrap();
        assert_eq!(
            b.complete().unwrap_err(),
            Error::UsedIdNotInFlight { queue: 0, id: 7 }
        );
        // The request may still be in flight: its buffer stays ours.
        assert_eq!(b.complete().unwrap_err(), Error::Broken);
        assert_eq!(b.submit_flush().unwrap_err(), Error::Broken);
        b.transport().io_mut().used_id_override = None;
        b.reinit().unwrap();
        assert_eq!(b.queued(), 0);

        // A used len above the chain's writable bytes.
        b.transport().io_mut().used_len_override = Some(100_000);
        b.submit_dma(DmaOp::Read, 0, dma(512), 512).unwrap();
        assert!(matches!(
            b.complete(),
            Err(Error::UsedLenTooLarge { len: 100_000, .. })
        ));
        b.transport().io_mut().used_len_override = None;
        b.reinit().unwrap();

        // A used len that does not cover the data: the buffer comes back
        // with the error.
        b.transport().io_mut().used_len_override = Some(1);
        let tok = b.submit_dma(DmaOp::Read, 0, dma(512), 512).unwrap();
        let c = b.complete().unwrap().unwrap();
        assert_eq!(c.token, tok);
        assert_eq!(
            c.result,
            Err(Error::ShortCompletion {
                len: 1,
                needed: 513
            })
        );
        assert!(c.buf.is_some());
        b.transport().io_mut().used_len_override = None;

        // An error status.
        b.transport().io_mut().disk.clear();
        let c = {
            b.submit_dma(DmaOp::Read, 0, dma(512), 512).unwrap();
            b.complete().unwrap().unwrap()
        };
        assert_eq!(c.result, Err(Error::BlockStatus(VIRTIO_BLK_S_IOERR)));
    }

    #[test]
    fn device_needs_reset_keeps_buffers_until_reinit() {
        let mut s = device(0);
        let t = Transport::probe(&mut s).unwrap().unwrap();
        let mut b = Block::new(t, IdentityHal).unwrap();
        b.transport().io_mut().needs_reset_on_notify = true;
        b.submit_dma(DmaOp::Read, 0, dma(512), 512).unwrap();
        assert_eq!(b.complete().unwrap_err(), Error::DeviceNeedsReset);
        assert_eq!(b.complete().unwrap_err(), Error::Broken);
        b.transport().io_mut().needs_reset_on_notify = false;
        b.reinit().unwrap();
        b.submit_dma(DmaOp::Read, 0, dma(512), 512).unwrap();
        assert!(b.complete().unwrap().unwrap().result.is_ok());
    }

    /// The largest requests are accepted: the whole buffer, and exactly
    /// MAX_QUEUED_TRANSFER bytes.
    #[test]
    fn the_whole_buffer_and_the_largest_transfer_are_accepted() {
        let mut s = device(0);
        s.disk = vec![7; MAX_QUEUED_TRANSFER];
        s.config[..8].copy_from_slice(&((MAX_QUEUED_TRANSFER / 512) as u64).to_le_bytes());
        let t = Transport::probe(&mut s).unwrap().unwrap();
        let mut b = Block::new(t, IdentityHal).unwrap();
        let page = dma(512);
        let n = page.len();
        b.submit_dma(DmaOp::Read, 0, page, n).unwrap();
        let big = dma(MAX_QUEUED_TRANSFER);
        b.submit_dma(DmaOp::Read, 0, big, MAX_QUEUED_TRANSFER)
            .unwrap();
        let mut lens = Vec::new();
        while let Some(c) = b.complete().unwrap() {
            c.result.unwrap();
            lens.push(c.buf.map(|d| d.len()));
        }
        lens.sort();
        assert_eq!(lens, [Some(4096), Some(MAX_QUEUED_TRANSFER)]);
    }
}
