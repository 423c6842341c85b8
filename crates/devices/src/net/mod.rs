//! The virtio network device (virtio v1.4 §5.1 "Network Device"), one
//! queue pair.
//!
//! Queues: `receiveq1` (index 0, host to guest) and `transmitq1` (index 1,
//! guest to host); no control virtqueue (VIRTIO_NET_F_CTRL_VQ is not
//! offered, so the control-queue requirements do not apply). Offered
//! features: `VIRTIO_NET_F_MAC`, `_STATUS` (link state, changes raise a
//! configuration change notification), `_MTU`, `_MRG_RXBUF`, `_CSUM`,
//! `_GUEST_CSUM`, plus `VIRTIO_F_INDIRECT_DESC`, `_EVENT_IDX` and
//! `_RING_RESET`; the transport adds `VIRTIO_F_VERSION_1` on Version 2
//! windows. No segmentation offload is offered.
//!
//! # Transmit (§5.1.6.2)
//! Each transmit chain is a `virtio_net_hdr` (12 bytes, or 10 for a legacy
//! driver without MRG_RXBUF) followed by one Ethernet frame. A chain that
//! is not that (shorter than the header, an empty frame, a frame over
//! [`Net::max_frame_len`], a device-writable part, a GSO type, a checksum
//! position past the frame) is dropped and counted; the chain is still
//! used (length 0). With `VIRTIO_NET_HDR_F_NEEDS_CSUM` the checksum goes
//! to a backend that takes the header ([`backend::Tap`]) as is, else the
//! device completes it. A frame the backend cannot take now stays in the
//! ring until the backend's fd is writable.
//!
//! # Receive (§5.1.6.3, §5.1.6.4)
//! Frames from the backend go into posted receive buffers: with
//! MRG_RXBUF over as many buffers as needed (all but the last filled
//! completely, `num_buffers` set, all made used together), else into one
//! buffer (a frame larger than the buffer is dropped and counted, the
//! buffer kept). `flags` is 0 unless GUEST_CSUM was negotiated and the
//! backend passed a partial checksum; a partial checksum for a driver
//! without GUEST_CSUM is completed by the device. With VIRTIO_NET_F_MTU
//! negotiated, longer frames are dropped. Frames that arrive while no
//! buffer is posted wait in a backlog of at most [`MAX_BACKLOG`] frames /
//! [`MAX_BACKLOG_BYTES`]; while it is full the device stops reading its
//! backend (the socket or TAP queue holds the rest, no spinning).
//!
//! # Link state
//! `status` reports the link up until the host says otherwise
//! ([`NetHandle::set_link_up`]) or the backend's peer closes the link
//! (a stream socket at end of file), which sets it down; both raise a
//! configuration change notification on a running device.
//!
//! # Threads
//! The device runs on the thread that runs its queues (the vCPU's in the
//! synchronous mode, a worker's otherwise). [`NetHandle`] reaches the link
//! state and the counters from any thread.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vm_memory::GuestMemory;
use vmmio_device::queue::Descriptor;
use vmmio_device::{
    ActivateError, BackendFd, DescriptorChain, InterruptStatus, LiveConfig, Queue, VirtioDevice,
};
use vmmio_spec::device_id;
use vmmio_spec::features::{bit, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_RESET};
use vmmio_spec::net::{
    Config, NetHdr, CONFIG_SIZE, ETH_HLEN, F_CSUM, F_GUEST_CSUM, F_MAC, F_MRG_RXBUF, F_MTU,
    F_STATUS, RECEIVEQ, S_LINK_UP, TRANSMITQ,
};
use vmmio_spec::Le16;

use crate::chain::{LogLimiter, MoreWork};

pub mod backend;
mod csum;
mod rx;
mod tx;

pub use backend::{Backend, Sent, Stream, Tap, MAX_FRAME_LEN};

/// `QueueSizeMax` of both queues, in descriptors.
pub const QUEUE_SIZE: u16 = 256;
/// Most frames kept while the driver has no receive buffer posted.
pub const MAX_BACKLOG: usize = 256;
/// Most bytes of frames kept while the driver has no receive buffer posted.
pub const MAX_BACKLOG_BYTES: usize = 1 << 20;
/// Default MTU in bytes (Ethernet payload), offered with VIRTIO_NET_F_MTU.
pub const DEFAULT_MTU: u16 = 1500;
/// Largest MTU the device offers: a frame with a VLAN tag must fit
/// [`MAX_FRAME_LEN`].
pub const MAX_MTU: u16 = (MAX_FRAME_LEN - ETH_HLEN - VLAN_HLEN) as u16;
/// Default MAC address: locally administered, unicast.
pub const DEFAULT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// The backend's token in [`VirtioDevice::backend_fds`].
pub const BACKEND_TOKEN: u64 = 0;
/// Token of the device's own "more transmit work" eventfd in
/// [`VirtioDevice::backend_fds`] (the one every device of this crate uses).
pub const MORE_TOKEN: u64 = MoreWork::TOKEN;

/// Length of an 802.1Q tag, in bytes.
const VLAN_HLEN: usize = 4;

/// Frame counters of a [`Net`] device, since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames the guest transmitted that went to the backend.
    pub tx_frames: u64,
    /// Their bytes (Ethernet frames, headers not counted).
    pub tx_bytes: u64,
    /// Transmit chains dropped: malformed, oversized, or the backend failed.
    pub tx_dropped: u64,
    /// Frames put in receive buffers.
    pub rx_frames: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Received frames dropped: longer than the MTU or than a
    /// non-mergeable receive buffer, or malformed.
    pub rx_dropped: u64,
}

#[derive(Default)]
struct Counters {
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    tx_dropped: AtomicU64,
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    rx_dropped: AtomicU64,
}

impl Counters {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// What the device shares with [`NetHandle`]s.
struct Shared {
    /// `struct virtio_net_config`: MAC, link status, MTU.
    config: LiveConfig,
    counters: Counters,
}

/// A handle on a [`Net`] device's link state, MAC and counters, usable from
/// any thread while the device runs. Cheap to clone.
///
/// A change updates the configuration space as one atomic step with respect
/// to driver reads, increments `ConfigGeneration` (Version 2 windows) and,
/// while the device runs, raises the configuration change notification
/// (virtio v1.4 §2.5, §5.1.4; see [`vmmio_device::LiveConfig`]).
#[derive(Clone)]
pub struct NetHandle(Arc<Shared>);

impl fmt::Debug for NetHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetHandle")
            .field("link_up", &self.link_up())
            .finish_non_exhaustive()
    }
}

impl NetHandle {
    /// Sets the link state reported in `status` (`VIRTIO_NET_S_LINK_UP`);
    /// a change on a running device raises a configuration change
    /// notification (§5.1.4). Frames still flow either way.
    pub fn set_link_up(&self, up: bool) {
        self.0.config.change(|b| put_status(b, up));
    }

    /// The link state reported to the driver.
    pub fn link_up(&self) -> bool {
        let mut status = [0u8; 2];
        self.0.config.read(STATUS_OFFSET, &mut status);
        u16::from_le_bytes(status) & S_LINK_UP != 0
    }

    /// Sets the MAC address reported in `mac`. A Linux driver reads it when
    /// it probes the device (inside a `ConfigGeneration` check, so a change
    /// while it reads is caught) and ignores later changes.
    pub fn set_mac(&self, mac: [u8; 6]) {
        self.0.config.change(|b| put_mac(b, mac));
    }

    /// The MAC address reported to the driver.
    pub fn mac(&self) -> [u8; 6] {
        let mut mac = [0u8; 6];
        self.0.config.read(0, &mut mac);
        mac
    }

    /// The counters so far.
    pub fn stats(&self) -> NetStats {
        let c = &self.0.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NetStats {
            tx_frames: g(&c.tx_frames),
            tx_bytes: g(&c.tx_bytes),
            tx_dropped: g(&c.tx_dropped),
            rx_frames: g(&c.rx_frames),
            rx_bytes: g(&c.rx_bytes),
            rx_dropped: g(&c.rx_dropped),
        }
    }
}

/// Byte offset of `status` in the configuration space.
const STATUS_OFFSET: u64 = 6;
/// Byte offset of `mtu` in the configuration space.
const MTU_OFFSET: usize = 10;

/// The configuration space of a new device: `mac`, link up, one queue
/// pair, `mtu`.
fn initial_config(mac: [u8; 6], mtu: u16) -> Vec<u8> {
    let c = Config {
        mac,
        status: Le16::new(S_LINK_UP),
        max_virtqueue_pairs: Le16::new(1),
        mtu: Le16::new(mtu),
    };
    let mut b = vec![0u8; CONFIG_SIZE];
    b[0..6].copy_from_slice(&c.mac);
    b[6..8].copy_from_slice(&c.status.to_bytes());
    b[8..10].copy_from_slice(&c.max_virtqueue_pairs.to_bytes());
    b[10..12].copy_from_slice(&c.mtu.to_bytes());
    b
}

fn put_mac(b: &mut [u8], mac: [u8; 6]) {
    if let Some(field) = b.get_mut(0..6) {
        field.copy_from_slice(&mac);
    }
}

fn put_status(b: &mut [u8], up: bool) {
    let status = if up { S_LINK_UP } else { 0 };
    if let Some(field) = b.get_mut(6..8) {
        field.copy_from_slice(&status.to_le_bytes());
    }
}

/// A received frame waiting for a receive buffer.
struct Frame {
    hdr: NetHdr,
    data: Vec<u8>,
}

/// State between `activate` and `reset`.
struct Active<M> {
    mem: M,
    interrupt: InterruptStatus,
    features: u64,
    /// `receiveq1` and `transmitq1`, `None` when not ready or reset.
    queues: [Option<Queue>; 2],
    /// A queue whose ring the driver broke; no longer served.
    broken: [bool; 2],
}

/// Rate-limited log lines.
#[derive(Default)]
struct Logs {
    malformed: LogLimiter,
    host: LogLimiter,
    broken: LogLimiter,
}

/// A virtio network device (device ID 1) with one queue pair, over a
/// [`Backend`].
pub struct Net<M> {
    backend: Box<dyn Backend>,
    mtu: u16,
    queue_max_sizes: [u16; 2],
    shared: Arc<Shared>,
    active: Option<Active<M>>,
    backlog: VecDeque<Frame>,
    backlog_bytes: usize,
    /// A transmit frame waits for the backend to take it.
    tx_blocked: bool,
    /// Frame buffers, [`MAX_FRAME_LEN`] (+ header) bytes each, reused.
    tx_buf: Box<[u8]>,
    rx_buf: Box<[u8]>,
    /// Chain storage reused by every pop.
    chain: DescriptorChain,
    /// Receive buffers gathered for one frame: descriptors and, per
    /// buffer, `(head, first descriptor, descriptor count, length)`.
    rx_descs: Vec<Descriptor>,
    rx_bufs: Vec<(u16, usize, usize, u64)>,
    used: Vec<(u16, u32)>,
    logs: Logs,
    /// Wakes the device for transmit chains left at the per-call cap.
    more: MoreWork,
}

impl<M> fmt::Debug for Net<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net")
            .field("mac", &self.handle().mac())
            .field("mtu", &self.mtu)
            .field("backlog", &self.backlog.len())
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

impl<M> Net<M> {
    /// A device over `backend`, MAC [`DEFAULT_MAC`], MTU [`DEFAULT_MTU`],
    /// link up.
    pub fn new(backend: Box<dyn Backend>) -> Self {
        Self {
            backend,
            mtu: DEFAULT_MTU,
            queue_max_sizes: [QUEUE_SIZE; 2],
            shared: Arc::new(Shared {
                config: LiveConfig::new(initial_config(DEFAULT_MAC, DEFAULT_MTU)),
                counters: Counters::default(),
            }),
            active: None,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            tx_blocked: false,
            tx_buf: vec![0; MAX_FRAME_LEN].into_boxed_slice(),
            rx_buf: vec![0; MAX_FRAME_LEN].into_boxed_slice(),
            chain: DescriptorChain::new(),
            rx_descs: Vec::new(),
            rx_bufs: Vec::new(),
            used: Vec::new(),
            logs: Logs::default(),
            more: MoreWork::default(),
        }
    }

    /// Sets the MAC address reported in the configuration space.
    pub fn with_mac(self, mac: [u8; 6]) -> Self {
        self.handle().set_mac(mac);
        self
    }

    /// Sets the MTU in bytes, clamped to 68..=[`MAX_MTU`] (§5.1.4.1: 68 to
    /// 65535, and a frame must fit [`MAX_FRAME_LEN`]). Set before the
    /// driver reads it; the device never changes it afterwards.
    pub fn with_mtu(mut self, mtu: u16) -> Self {
        self.mtu = mtu.clamp(68, MAX_MTU);
        let mtu = self.mtu;
        self.shared.config.change(|b| {
            if let Some(field) = b.get_mut(MTU_OFFSET..MTU_OFFSET + 2) {
                field.copy_from_slice(&mtu.to_le_bytes());
            }
        });
        self
    }

    /// Sets `QueueSizeMax` of both queues to `size` descriptors (default
    /// [`QUEUE_SIZE`]), clamped to 1..=32768.
    pub fn with_queue_size(mut self, size: u16) -> Self {
        self.queue_max_sizes = [size.clamp(1, 32768); 2];
        self
    }

    /// A handle on the link state and the counters.
    pub fn handle(&self) -> NetHandle {
        NetHandle(self.shared.clone())
    }

    /// The MTU in bytes.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// Longest frame the device forwards, in bytes: the MTU plus an
    /// Ethernet header with one VLAN tag.
    pub fn max_frame_len(&self) -> usize {
        usize::from(self.mtu) + ETH_HLEN + VLAN_HLEN
    }
}

impl<M: GuestMemory> Net<M> {
    /// The driver broke queue `q`: log, stop serving it, DEVICE_NEEDS_RESET
    /// (§2.1.2).
    fn break_queue(&mut self, q: usize, what: &dyn fmt::Display) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let level = match self.logs.broken.level() {
            log::Level::Warn => log::Level::Error,
            quiet => quiet,
        };
        log::log!(
            level,
            "virtio-net: driver broke queue {q}, no longer served: {what}"
        );
        if let Some(b) = active.broken.get_mut(q) {
            *b = true;
        }
        active.interrupt.device_needs_reset();
    }

    /// Reads frames from the backend into receive buffers (or the
    /// backlog), at most a bounded number per call.
    fn poll_backend(&mut self) {
        // Enough to fill a ring of small frames; the fd stays ready if more
        // wait, so the next wake-up continues.
        for _ in 0..2 * MAX_BACKLOG {
            if self.backlog_full() {
                break;
            }
            let (hdr, n) = match self.backend.recv(&mut self.rx_buf) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    if self.backend.fd().is_none() {
                        // The peer closed the link: report it (§5.1.4 status).
                        NetHandle(self.shared.clone()).set_link_up(false);
                    }
                    break;
                }
                Err(e) => {
                    log::log!(
                        self.logs.host.level(),
                        "virtio-net: backend read failed: {e}"
                    );
                    break;
                }
            };
            let n = n.min(self.rx_buf.len());
            if self.backlog.is_empty() {
                let mut data = std::mem::take(&mut self.rx_buf);
                let r = self.receive_one(&hdr, &mut data[..n]);
                self.rx_buf = data;
                match r {
                    rx::Placed::Done | rx::Placed::Dropped => continue,
                    rx::Placed::NoRoom => {}
                }
            }
            self.backlog_bytes += n;
            self.backlog.push_back(Frame {
                hdr,
                data: self.rx_buf[..n].to_vec(),
            });
        }
        self.rx_notify();
    }

    fn backlog_full(&self) -> bool {
        self.backlog.len() >= MAX_BACKLOG || self.backlog_bytes >= MAX_BACKLOG_BYTES
    }

    fn flush_backend(&mut self) {
        if let Err(e) = self.backend.flush() {
            log::log!(
                self.logs.host.level(),
                "virtio-net: backend write failed: {e}"
            );
        }
        if !self.backend.wants_write() && self.tx_blocked {
            self.tx_blocked = false;
            self.transmit();
        }
    }
}

impl<M: GuestMemory + Send> VirtioDevice<M> for Net<M> {
    fn device_type(&self) -> u32 {
        device_id::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn device_features(&self) -> u64 {
        bit(F_MAC)
            | bit(F_STATUS)
            | bit(F_MTU)
            | bit(F_MRG_RXBUF)
            | bit(F_CSUM)
            | bit(F_GUEST_CSUM)
            | bit(VIRTIO_F_INDIRECT_DESC)
            | bit(VIRTIO_F_EVENT_IDX)
            | bit(VIRTIO_F_RING_RESET)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.shared.config.read(offset, data);
    }

    fn config_generation(&self) -> u32 {
        self.shared.config.generation()
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Every field is read-only for the driver (§5.1.4; the legacy
        // writable `mac` is not offered without VIRTIO_NET_F_CTRL_MAC_ADDR
        // semantics either way).
    }

    fn activate(
        &mut self,
        mem: M,
        interrupt: InterruptStatus,
        queues: Vec<Queue>,
        features: u64,
    ) -> Result<(), ActivateError> {
        self.more.open()?;
        let mut it = queues.into_iter().map(|q| q.ready().then_some(q));
        let rx = it.next().flatten();
        let tx = it.next().flatten();
        self.shared.config.activate(interrupt.clone());
        self.backend
            .set_guest_csum(features & bit(F_GUEST_CSUM) != 0);
        self.active = Some(Active {
            mem,
            interrupt,
            features,
            queues: [rx, tx],
            broken: [false; 2],
        });
        self.tx_blocked = false;
        self.transmit();
        self.poll_backend();
        Ok(())
    }

    fn queue_notify(
        &mut self,
        index: u16,
        _data: Option<vmmio_spec::notification::NotificationData>,
    ) {
        match index {
            RECEIVEQ => {
                self.drain_backlog();
                self.poll_backend();
            }
            TRANSMITQ => self.transmit(),
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.shared.config.deactivate();
        // Frames for the old driver are stale; the backend (and a stream's
        // partly written frame) stays.
        self.backlog.clear();
        self.backlog_bytes = 0;
        self.tx_blocked = false;
        self.more.clear();
    }

    fn queue_reset(&mut self, index: u16) {
        if let Some(active) = self.active.as_mut() {
            if let Some(slot) = active.queues.get_mut(usize::from(index)) {
                *slot = None;
                active.broken[usize::from(index)] = false;
            }
        }
    }

    fn queue_enable(&mut self, index: u16, queue: Queue) {
        if let Some(active) = self.active.as_mut() {
            if let Some(slot) = active.queues.get_mut(usize::from(index)) {
                *slot = Some(queue);
                active.broken[usize::from(index)] = false;
            }
        }
        self.queue_notify(index, None);
    }

    fn backend_fds(&self) -> Vec<BackendFd> {
        let mut fds = Vec::new();
        if self.active.is_none() {
            return fds;
        }
        if let Some(fd) = self.backend.fd() {
            let readable = !self.backlog_full();
            // A refused frame waits for writability whether or not the
            // backend keeps output of its own (a TAP does not: its
            // `wants_write` is always false).
            let writable = self.backend.wants_write() || self.tx_blocked;
            if readable || writable {
                fds.push(BackendFd {
                    fd,
                    token: BACKEND_TOKEN,
                    readable,
                    writable,
                });
            }
        }
        fds.extend(self.more.backend_fd());
        fds
    }

    fn backend_event(&mut self, token: u64) {
        if self.active.is_none() {
            return;
        }
        match token {
            BACKEND_TOKEN => {
                self.flush_backend();
                self.drain_backlog();
                self.poll_backend();
            }
            MORE_TOKEN => {
                self.more.clear();
                self.transmit();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
