//! Network device driver, one queue pair (virtio v1.4 §5.1 "Network
//! Device"): whole Ethernet frames out on transmitq1 (queue 1), in on
//! receiveq1 (queue 0), where the driver keeps buffers posted.
//!
//! Negotiated when offered: VIRTIO_NET_F_MAC (else a locally administered
//! default), VIRTIO_NET_F_STATUS (link state; changes arrive as
//! configuration interrupts), VIRTIO_NET_F_MTU, VIRTIO_NET_F_MRG_RXBUF
//! (frames over several receive buffers) and VIRTIO_NET_F_CSUM (the driver
//! may leave checksums to the device; this driver never does, frames go
//! out fully checksummed). GUEST_CSUM and every offload are declined, so
//! received frames are always fully checksummed (§5.1.6.4).
//!
//! Non-blocking throughout: [`Net::transmit`] returns once the frame is
//! queued ([`Error::QueueFull`] when every transmit buffer is in flight),
//! [`Net::receive`] returns a frame or nothing. Nothing waits on the
//! device, so a stalled device can only stop traffic.
//!
//! Each transmit chain is the header and the frame as two segments, and
//! each receive buffer the header part and the rest, so legacy devices
//! without VIRTIO_F_ANY_LAYOUT get the header in a descriptor of its own
//! (§5.1.6.7).
//!
//! With the `smoltcp` feature, [`Net`] implements
//! `smoltcp::phy::Device`:
//!
//! ```
//! # #[cfg(feature = "smoltcp")]
//! # fn up<R: vmmio_driver::RegisterIo, H: vmmio_driver::Hal + Clone>(
//! #     transport: vmmio_driver::Transport<R>,
//! #     hal: H,
//! # ) -> vmmio_driver::Result<()> {
//! use smoltcp::iface::{Config, Interface, SocketSet};
//! use smoltcp::time::Instant;
//! use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};
//!
//! let mut net = vmmio_driver::net::Net::new(transport, hal)?;
//! let mac = HardwareAddress::Ethernet(EthernetAddress(net.mac()));
//! let mut iface = Interface::new(Config::new(mac), &mut net, Instant::from_millis(0));
//! iface.update_ip_addrs(|a| {
//!     a.push(IpCidr::new(Ipv4Address::new(10, 0, 2, 15).into(), 24)).unwrap();
//! });
//! let mut sockets = SocketSet::new(Vec::new());
//! // Add TCP sockets to `sockets`, then, in the event loop (and from the
//! // interrupt handler, after `net.handle_interrupt()`):
//! iface.poll(Instant::from_millis(1), &mut net, &mut sockets);
//! # Ok(())
//! # }
//! ```

use alloc::vec::Vec;

use vmmio_spec::device_id;
use vmmio_spec::features::bit;
use vmmio_spec::net::{
    config, hdr_len, NetHdr, ETH_HLEN, F_CSUM, F_MAC, F_MRG_RXBUF, F_MTU, F_STATUS, S_LINK_UP,
};

use crate::error::{Error, Result};
use crate::hal::{Dma, Hal};
use crate::io::RegisterIo;
use crate::queue::{Segment, VirtQueue};
use crate::transport::{InterruptEvents, Transport};

pub use vmmio_spec::net::{RECEIVEQ, TRANSMITQ};

/// The device-type feature bits [`Net::new`] accepts when offered.
pub const FEATURES: u64 = bit(F_MAC) | bit(F_STATUS) | bit(F_MTU) | bit(F_MRG_RXBUF) | bit(F_CSUM);
/// Queue size asked for, in entries, for both queues.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
/// Receive buffers kept posted (at most the queue size).
pub const RX_BUFFERS: usize = 128;
/// Transmit buffers (frames in flight at once).
pub const TX_BUFFERS: usize = 64;
/// Bytes per buffer slot: a header and a 1500-byte-MTU frame with a VLAN
/// tag fit; larger MTUs get larger slots.
pub const SLOT_SIZE: usize = 2048;
/// MTU assumed without VIRTIO_NET_F_MTU, in bytes.
pub const DEFAULT_MTU: usize = 1500;
/// Largest MTU this driver accepts from the device, in bytes; larger
/// values are capped (the device must still forward frames up to it).
pub const MAX_MTU: usize = 9000;
/// MAC address used when the device offers no VIRTIO_NET_F_MAC.
pub const FALLBACK_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

/// Room for an 802.1Q tag, in bytes.
const VLAN_HLEN: usize = 4;

/// Counters of a [`Net`] driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames queued for transmission.
    pub tx_frames: u64,
    /// Frames received.
    pub rx_frames: u64,
    /// Received frames dropped: malformed completions (too short, a bad
    /// `num_buffers`, longer than the MTU allows).
    pub rx_errors: u64,
}

/// The transmit side: its queue and buffer slots.
struct TxSide<H: Hal + Clone> {
    q: VirtQueue<H>,
    pool: Dma<H>,
    /// Slot of each token in flight, by token.
    slot_of: Vec<Option<usize>>,
    free: Vec<usize>,
    slot_size: usize,
    hdr_len: usize,
    max_frame: usize,
    /// Frame buffer of the smoltcp transmit token, reused.
    #[cfg_attr(not(feature = "smoltcp"), allow(dead_code))]
    scratch: Vec<u8>,
}

/// The receive side: its queue and buffer slots.
struct RxSide<H: Hal + Clone> {
    q: VirtQueue<H>,
    pool: Dma<H>,
    slot_of: Vec<Option<usize>>,
    idle: Vec<usize>,
    slot_size: usize,
}

/// A virtio network device (device ID 1), one queue pair.
pub struct Net<R: RegisterIo, H: Hal + Clone> {
    transport: Transport<R>,
    hal: H,
    rx: Option<RxSide<H>>,
    tx: Option<TxSide<H>>,
    /// The frame [`Net::receive`] assembles, reused.
    frame: Vec<u8>,
    mac: [u8; 6],
    mtu: usize,
    link_up: bool,
    hdr_len: usize,
    mrg: bool,
    stats: NetStats,
    /// The device-type features asked for at creation (for `reinit`).
    wanted: u64,
    /// A device fault or DEVICE_NEEDS_RESET: nothing is posted again
    /// until `reinit`.
    broken: bool,
    /// Initialisation failed and FAILED was set: keep it visible.
    failed: bool,
}

impl<R: RegisterIo, H: Hal + Clone> core::fmt::Debug for Net<R, H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Net")
            .field("mac", &self.mac)
            .field("mtu", &self.mtu)
            .field("link_up", &self.link_up)
            .field("mrg_rxbuf", &self.mrg)
            .field("stats", &self.stats)
            .field("broken", &self.broken)
            .finish()
    }
}

impl<R: RegisterIo, H: Hal + Clone> Net<R, H> {
    /// Initialises the network device behind `transport` (virtio v1.4
    /// §3.1.1, §5.1.5): negotiates the features listed in the module docs,
    /// reads MAC, status and MTU, sets up both queues, fills the receive
    /// queue, sets DRIVER_OK, then notifies the receive queue.
    ///
    /// # Errors
    ///
    /// [`Error::WrongDeviceType`], and the errors of
    /// [`Transport::begin_init`], [`Transport::setup_queue`], [`Dma::new`]
    /// and [`Transport::finish_init`] (FAILED is set after negotiation).
    pub fn new(transport: Transport<R>, hal: H) -> Result<Self> {
        Self::with_features(transport, hal, FEATURES)
    }

    /// As [`Net::new`], accepting only the device-type feature bits in
    /// `wanted` (a subset of [`FEATURES`]; e.g. without MRG_RXBUF).
    ///
    /// # Errors
    ///
    /// As [`Net::new`].
    pub fn with_features(transport: Transport<R>, hal: H, wanted: u64) -> Result<Self> {
        if transport.device_id() != device_id::NET {
            return Err(Error::WrongDeviceType {
                expected: device_id::NET,
                found: transport.device_id(),
            });
        }
        let mut n = Self {
            transport,
            hal,
            rx: None,
            tx: None,
            frame: Vec::new(),
            mac: FALLBACK_MAC,
            mtu: DEFAULT_MTU,
            link_up: true,
            hdr_len: 0,
            mrg: false,
            stats: NetStats::default(),
            wanted: wanted & FEATURES,
            broken: true,
            failed: false,
        };
        n.start().map(|()| n)
    }

    /// Initialises the device; FAILED on error.
    fn start(&mut self) -> Result<()> {
        let r = self.init(self.wanted);
        self.failed = r.is_err();
        self.broken = r.is_err();
        if r.is_err() {
            self.transport.fail();
        }
        r
    }

    /// Resets the device and initialises it again (after
    /// [`Error::DeviceNeedsReset`], [`Error::Broken`] or a device fault;
    /// see the crate docs, "Recovery after DEVICE_NEEDS_RESET"): new
    /// queues, every receive buffer posted again, the same features asked
    /// for. Frames that were in transmit are dropped; the counters stay.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new), and [`Error::Timeout`] for the reset (the
    /// old buffers are then leaked, never freed under the device).
    pub fn reinit(&mut self) -> Result<()> {
        self.broken = true;
        let (rx, tx) = (self.rx.take(), self.tx.take());
        let (rxq, rx_pool) = rx.map(|r| (r.q, r.pool)).unzip();
        let (txq, tx_pool) = tx.map(|t| (t.q, t.pool)).unzip();
        if !self
            .transport
            .shutdown([rxq, txq].into_iter().flatten(), true)
        {
            for p in [rx_pool, tx_pool].into_iter().flatten() {
                p.leak();
            }
            return Err(Error::Timeout {
                what: "the device to stop",
            });
        }
        self.start()
    }

    /// Marks the driver broken when `r` is a device fault (not a refusal
    /// of the caller's frame, not a full ring).
    fn check<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            if !matches!(e, Error::FrameTooLong { .. } | Error::QueueFull { .. }) {
                self.broken = true;
            }
        }
        r
    }

    fn init(&mut self, wanted: u64) -> Result<()> {
        let features = self.transport.begin_init(wanted)?;
        let t = &mut self.transport;
        if t.has_feature(F_MAC) {
            let mut mac = [0u8; 6];
            t.read_config_bytes(config::MAC, &mut mac)?;
            self.mac = mac;
        }
        if t.has_feature(F_MTU) {
            let mtu = usize::from(t.read_config_u16(config::MTU)?);
            // §5.1.4.2: a driver that negotiated MTU uses it; below 68 is
            // the device's fault, clamp it rather than trust it.
            self.mtu = mtu.clamp(68, MAX_MTU);
        }
        self.link_up = self.read_link()?;
        self.hdr_len = hdr_len(features);
        self.mrg = features & bit(F_MRG_RXBUF) != 0;
        let max_frame = self.mtu + ETH_HLEN + VLAN_HLEN;
        // A slot holds a whole frame with its header (transmit, and receive
        // without MRG_RXBUF, §5.1.6.3.1); 2 KiB multiples.
        let slot_size = (self.hdr_len + max_frame).div_ceil(SLOT_SIZE) * SLOT_SIZE;

        let t = &mut self.transport;
        let rxq = t.setup_queue(self.hal.clone(), RECEIVEQ, DEFAULT_QUEUE_SIZE)?;
        let txq = t.setup_queue(self.hal.clone(), TRANSMITQ, DEFAULT_QUEUE_SIZE)?;
        // Two descriptors per chain (header, rest) unless indirect.
        let per = if rxq.indirect() { 1 } else { 2 };
        let n_rx = RX_BUFFERS.min(usize::from(rxq.size()) / per).max(1);
        let n_tx = TX_BUFFERS.min(usize::from(txq.size()) / per).max(1);
        // With MRG_RXBUF a large frame spans several 2 KiB buffers.
        let rx_slot = if self.mrg { SLOT_SIZE } else { slot_size };
        let mut rx = RxSide {
            pool: Dma::new(self.hal.clone(), n_rx * rx_slot)?,
            slot_of: alloc::vec![None; usize::from(rxq.size())],
            idle: (0..n_rx).collect(),
            slot_size: rx_slot,
            q: rxq,
        };
        // Transmit interrupts are not needed: slots are reclaimed when
        // the next frame goes out.
        let mut txq = txq;
        txq.set_used_notifications(false);
        self.tx = Some(TxSide {
            pool: Dma::new(self.hal.clone(), n_tx * slot_size)?,
            slot_of: alloc::vec![None; usize::from(txq.size())],
            free: (0..n_tx).collect(),
            slot_size,
            hdr_len: self.hdr_len,
            max_frame,
            scratch: Vec::new(),
            q: txq,
        });
        // Populate the receive queue before DRIVER_OK (§3.1.1 step 7,
        // §5.1.5), notify after.
        rx.post_idle(self.hdr_len)?;
        self.rx = Some(rx);
        self.transport.finish_init()?;
        if let Some(rx) = self.rx.as_mut() {
            self.transport.notify(&mut rx.q)?;
        }
        Ok(())
    }

    fn read_link(&mut self) -> Result<bool> {
        if !self.transport.has_feature(F_STATUS) {
            // §5.1.4.2: without STATUS the link is assumed up.
            return Ok(true);
        }
        Ok(self.transport.read_config_u16(config::STATUS)? & S_LINK_UP != 0)
    }

    /// The transport.
    pub fn transport(&mut self) -> &mut Transport<R> {
        &mut self.transport
    }

    /// The MAC address: the device's (VIRTIO_NET_F_MAC) or
    /// [`FALLBACK_MAC`].
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The MTU in bytes (Ethernet payload): the device's
    /// (VIRTIO_NET_F_MTU, capped at [`MAX_MTU`]) or [`DEFAULT_MTU`].
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// Longest frame [`Net::transmit`] takes and [`Net::receive`] returns,
    /// in bytes: the MTU plus an Ethernet header with one VLAN tag.
    pub fn max_frame_len(&self) -> usize {
        self.mtu + ETH_HLEN + VLAN_HLEN
    }

    /// Whether MRG_RXBUF was negotiated.
    pub fn mrg_rxbuf(&self) -> bool {
        self.mrg
    }

    /// The link state as of the last configuration interrupt (always up
    /// without VIRTIO_NET_F_STATUS).
    pub fn link_up(&self) -> bool {
        self.link_up
    }

    /// The counters so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Handles an interrupt: acknowledges it and, on a configuration
    /// change, re-reads the link state. Frames are collected by
    /// [`Net::receive`].
    ///
    /// # Errors
    ///
    /// [`Error::DeviceNeedsReset`]; the driver is then broken until
    /// [`reinit`](Self::reinit).
    pub fn handle_interrupt(&mut self) -> Result<InterruptEvents> {
        let ev = self.transport.ack_interrupt();
        let ev = self.check(ev)?;
        if ev.config_changed {
            self.link_up = self.read_link()?;
        }
        Ok(ev)
    }

    /// Whether a transmit buffer is free now (after reclaiming completed
    /// ones).
    ///
    /// # Errors
    ///
    /// [`Error::Broken`] and the used-ring errors of
    /// [`VirtQueue::pop_used`]; [`Error::DeviceNeedsReset`] when no buffer
    /// is free and the device set it (`Status` is read then only).
    pub fn can_transmit(&mut self) -> Result<bool> {
        let r = self.can_transmit_inner();
        self.check(r)
    }

    fn can_transmit_inner(&mut self) -> Result<bool> {
        let tx = self.live_tx()?;
        tx.reclaim()?;
        if tx.free.is_empty() {
            self.transport.check_status()?;
            return Ok(false);
        }
        Ok(true)
    }

    fn live_tx(&mut self) -> Result<&mut TxSide<H>> {
        if self.broken {
            return Err(Error::Broken);
        }
        self.tx.as_mut().ok_or(Error::Broken)
    }

    /// Queues one Ethernet frame (destination MAC first, no FCS) for
    /// transmission and returns at once.
    ///
    /// # Errors
    ///
    /// [`Error::FrameTooLong`] past [`Net::max_frame_len`] (or empty);
    /// [`Error::QueueFull`] when every transmit buffer is in flight
    /// ([`Error::DeviceNeedsReset`] instead when the device set it);
    /// [`Error::Broken`]; the used-ring errors of [`VirtQueue::pop_used`].
    pub fn transmit(&mut self, frame: &[u8]) -> Result<()> {
        let r = self.transmit_inner(frame);
        self.check(r)
    }

    fn transmit_inner(&mut self, frame: &[u8]) -> Result<()> {
        if self.broken {
            return Err(Error::Broken);
        }
        let tx = self.tx.as_mut().ok_or(Error::Broken)?;
        match tx.send(&mut self.transport, frame) {
            Err(Error::QueueFull { needed, free }) => {
                // The ring is full: a device that stopped for good says so.
                self.transport.check_status()?;
                Err(Error::QueueFull { needed, free })
            }
            Err(e) => Err(e),
            Ok(()) => {
                self.stats.tx_frames += 1;
                Ok(())
            }
        }
    }

    /// Takes the next received frame, if any, and hands it to `f`; the
    /// receive buffers go back to the device. Never blocks.
    ///
    /// # Errors
    ///
    /// [`Error::Broken`] and the used-ring errors of
    /// [`VirtQueue::pop_used`] (a device that breaks the ring).
    pub fn receive<T>(&mut self, f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>> {
        if self.broken {
            return Err(Error::Broken);
        }
        let got = self.next_frame();
        if self.check(got)? {
            Ok(Some(f(&self.frame)))
        } else {
            Ok(None)
        }
    }

    /// Assembles the next good frame into `self.frame`; false when none.
    fn next_frame(&mut self) -> Result<bool> {
        let max = self.max_frame_len();
        let (hdr_len, mrg) = (self.hdr_len, self.mrg);
        let rx = self.rx.as_mut().ok_or(Error::Broken)?;
        let mut got = false;
        // Bounded: each round consumes at least one used buffer.
        for _ in 0..rx.q.size() {
            match rx.take_frame(&mut self.frame, hdr_len, mrg, max) {
                Ok(Some(true)) => {
                    got = true;
                    break;
                }
                Ok(Some(false)) => self.stats.rx_errors += 1,
                Ok(None) => break,
                Err(e) => return Err(e),
            }
        }
        if rx.post_idle(hdr_len)? > 0 {
            self.transport.notify_if_needed(&mut rx.q)?;
        }
        if got {
            self.stats.rx_frames += 1;
        }
        Ok(got)
    }
}

impl<H: Hal + Clone> TxSide<H> {
    fn reclaim(&mut self) -> Result<()> {
        // At most the queue size completions.
        for _ in 0..self.q.size() {
            let Some(used) = self.q.pop_used()? else {
                break;
            };
            if let Some(slot) = self
                .slot_of
                .get_mut(usize::from(used.token))
                .and_then(Option::take)
            {
                self.free.push(slot);
            }
        }
        Ok(())
    }

    fn send<R: RegisterIo>(&mut self, t: &mut Transport<R>, frame: &[u8]) -> Result<()> {
        if frame.is_empty() || frame.len() > self.max_frame {
            return Err(Error::FrameTooLong {
                len: frame.len(),
                max: self.max_frame,
            });
        }
        if self.free.is_empty() {
            self.reclaim()?;
        }
        let Some(slot) = self.free.pop() else {
            return Err(Error::QueueFull { needed: 1, free: 0 });
        };
        let base = slot * self.slot_size;
        let hdr = NetHdr::default().to_bytes();
        let r = self
            .pool
            .write_bytes(base, &hdr[..self.hdr_len])
            .and_then(|()| self.pool.write_bytes(base + self.hdr_len, frame));
        if let Err(e) = r {
            self.free.push(slot);
            return Err(e);
        }
        let addr = self.pool.paddr() + base as u64;
        // Both lengths are below the slot size (a few KiB).
        let segs = [
            Segment {
                addr,
                len: len32(self.hdr_len),
            },
            Segment {
                addr: addr + self.hdr_len as u64,
                len: len32(frame.len()),
            },
        ];
        // SAFETY: the slot is a disjoint part of this driver's transmit
        // pool, not touched again until its chain is reclaimed; the pool
        // is leaked, not freed, if the device never stops.
        match unsafe { self.q.add_segments(&segs, &[]) } {
            Ok(token) => {
                if let Some(s) = self.slot_of.get_mut(usize::from(token)) {
                    *s = Some(slot);
                }
            }
            Err(e) => {
                self.free.push(slot);
                return Err(e);
            }
        }
        t.notify_if_needed(&mut self.q)?;
        Ok(())
    }
}

impl<H: Hal + Clone> RxSide<H> {
    /// Posts every idle slot as a receive buffer (header part, rest).
    fn post_idle(&mut self, hdr_len: usize) -> Result<usize> {
        let mut posted = 0;
        while let Some(slot) = self.idle.pop() {
            let addr = self.pool.paddr() + (slot * self.slot_size) as u64;
            // A slot is a few KiB.
            let segs = [
                Segment {
                    addr,
                    len: len32(hdr_len),
                },
                Segment {
                    addr: addr + hdr_len as u64,
                    len: len32(self.slot_size - hdr_len),
                },
            ];
            // SAFETY: the slot is a disjoint part of this driver's receive
            // pool, read again only after its chain completes; the pool is
            // leaked, not freed, if the device never stops.
            match unsafe { self.q.add_segments(&[], &segs) } {
                Ok(token) => {
                    if let Some(s) = self.slot_of.get_mut(usize::from(token)) {
                        *s = Some(slot);
                    }
                    posted += 1;
                }
                Err(e) => {
                    self.idle.push(slot);
                    return Err(e);
                }
            }
        }
        Ok(posted)
    }

    /// Takes one used buffer's slot and length.
    fn pop(&mut self) -> Result<Option<(usize, usize)>> {
        let Some(used) = self.q.pop_used()? else {
            return Ok(None);
        };
        let slot = self
            .slot_of
            .get_mut(usize::from(used.token))
            .and_then(Option::take)
            .ok_or(Error::Broken)?;
        self.idle.push(slot);
        // The queue checked `len` against the buffer's length.
        let len = usize::try_from(used.len).unwrap_or(0).min(self.slot_size);
        Ok(Some((slot, len)))
    }

    /// Takes the buffers of one frame: `Some(true)` with the frame in
    /// `out`, `Some(false)` for a malformed one (dropped), `None` when no
    /// buffer is used.
    fn take_frame(
        &mut self,
        out: &mut Vec<u8>,
        hdr_len: usize,
        mrg: bool,
        max: usize,
    ) -> Result<Option<bool>> {
        let Some((slot, len)) = self.pop()? else {
            return Ok(None);
        };
        if len < hdr_len {
            return Ok(Some(false));
        }
        let base = slot * self.slot_size;
        let mut hb = [0u8; 12];
        self.pool.read_bytes(base, &mut hb[..hdr_len])?;
        let hdr = NetHdr::from_bytes(&hb[..hdr_len]).unwrap_or_default();
        let buffers = if mrg { hdr.num_buffers.get() } else { 1 };
        out.clear();
        let mut ok = buffers >= 1;
        ok &= append(&self.pool, out, base + hdr_len, len - hdr_len, max)?;
        // §5.1.6.4: the other buffers of the frame are used together with
        // the first; a device that says otherwise loses the frame.
        for _ in 1..buffers {
            match self.pop()? {
                Some((slot, len)) => {
                    ok &= append(&self.pool, out, slot * self.slot_size, len, max)?;
                }
                None => {
                    ok = false;
                    break;
                }
            }
        }
        Ok(Some(ok && !out.is_empty()))
    }
}

/// A segment length: slots are a few KiB, so it always fits.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Appends `len` bytes at `offset` of `pool` to `out` unless that makes
/// `out` longer than `max`; returns whether it did.
fn append<H: Hal>(
    pool: &Dma<H>,
    out: &mut Vec<u8>,
    offset: usize,
    len: usize,
    max: usize,
) -> Result<bool> {
    let start = out.len();
    if start + len > max {
        return Ok(false);
    }
    out.resize(start + len, 0);
    pool.read_bytes(offset, &mut out[start..])?;
    Ok(true)
}

impl<R: RegisterIo, H: Hal + Clone> Drop for Net<R, H> {
    fn drop(&mut self) {
        // As for the other drivers: reset unless initialisation failed,
        // stop the queues, leak what the device may still use.
        let rx = self.rx.take();
        let tx = self.tx.take();
        let (rxq, rx_pool) = match rx {
            Some(r) => (Some(r.q), Some(r.pool)),
            None => (None, None),
        };
        let (txq, tx_pool) = match tx {
            Some(t) => (Some(t.q), Some(t.pool)),
            None => (None, None),
        };
        let queues = [rxq, txq].into_iter().flatten();
        if !self.transport.shutdown(queues, !self.failed) {
            for p in [rx_pool, tx_pool].into_iter().flatten() {
                p.leak();
            }
        }
    }
}

#[cfg(feature = "smoltcp")]
mod phy;

#[cfg(test)]
mod tests;
