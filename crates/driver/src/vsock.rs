//! Socket device driver (virtio v1.4 §5.10 "Socket Device"): stream
//! connections between this guest and its host, non-blocking, with the
//! credit-based flow control of §5.10.6.3 in both directions.
//!
//! The driver keeps [`RX_BUFFERS`] receive buffers posted on the rx queue
//! and sends packets from [`TX_SLOTS`] transmit slots; nothing waits:
//! [`Vsock::send`] takes what the peer's credit and the free slots allow
//! and returns how many bytes that was, [`Vsock::recv`] returns what has
//! arrived (0 when nothing), and [`Vsock::poll`] (or
//! [`Vsock::handle_interrupt`]) moves packets. A connection is named by a
//! [`ConnId`]; [`Vsock::state`] says where it is (`None`: gone).
//!
//! The device is not trusted: a used length shorter than a header, a
//! `len` beyond the used length, a packet for another CID is dropped; an
//! unknown `type` gets RST (§5.10.6.4); payload beyond the credit this
//! driver granted, or an op that does not fit the connection's state,
//! resets the connection.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;

use vmmio_spec::device_id;
use vmmio_spec::features::bit;
use vmmio_spec::vsock::{op, EVENT_SIZE, EVENT_TRANSPORT_RESET, TYPE_STREAM};
pub use vmmio_spec::vsock::{
    Header, EVENTQ, F_NO_IMPLIED_STREAM, F_STREAM, HEADER_SIZE, HOST_CID, RXQ, SHUTDOWN_F_RECEIVE,
    SHUTDOWN_F_SEND, TXQ,
};
use vmmio_spec::{Le16, Le32, Le64};

use crate::error::{Error, Result};
use crate::hal::{Dma, Hal, PAGE_SIZE};
use crate::io::RegisterIo;
use crate::queue::{Segment, VirtQueue};
use crate::transport::{InterruptEvents, Transport};

/// Receive buffers kept posted.
pub const RX_BUFFERS: usize = 16;
/// Bytes per receive buffer (header included).
pub const RX_BUFFER_SIZE: usize = PAGE_SIZE;
/// Transmit slots (packets in flight at once).
pub const TX_SLOTS: usize = 16;
/// Bytes per transmit slot (header included).
pub const TX_SLOT_SIZE: usize = 4 * PAGE_SIZE;
/// Largest payload of one packet this driver sends, in bytes.
pub const MAX_TX_PAYLOAD: usize = TX_SLOT_SIZE - HEADER_SIZE;
/// Event buffers kept posted (each [`EVENT_SIZE`] bytes, 8 apart).
const EVENT_BUFFERS: usize = 4;
/// [`RX_BUFFER_SIZE`] as a descriptor length.
const RX_BUFFER_LEN: u32 = 4096;
const _: () = assert!(RX_BUFFER_LEN as usize == RX_BUFFER_SIZE);
/// [`EVENT_SIZE`] as a descriptor length.
const EVENT_LEN: u32 = 4;
const _: () = assert!(EVENT_LEN as usize == EVENT_SIZE);
/// Queue size asked for, in entries, for every queue.
pub const DEFAULT_QUEUE_SIZE: u16 = 64;
/// RST replies to packets of no connection kept while no transmit slot is
/// free; more are dropped (the device is flooding the driver).
const MAX_REPLIES: usize = 64;
/// First local port [`Vsock::connect`] picks (as Linux: above the
/// reserved ports).
const FIRST_EPHEMERAL_PORT: u32 = 1024;

/// Tunables of a [`Vsock`].
#[derive(Clone, Copy, Debug)]
pub struct VsockOptions {
    /// Receive buffer space granted to the peer per connection, in bytes
    /// (`buf_alloc`). Default 64 KiB.
    pub buf_alloc: u32,
    /// Most open connections (accepted ones included). Default 256.
    pub max_connections: usize,
}

impl Default for VsockOptions {
    fn default() -> Self {
        Self {
            buf_alloc: 64 * 1024,
            max_connections: 256,
        }
    }
}

/// A connection: this guest's port and the peer's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId {
    /// This guest's port.
    pub local_port: u32,
    /// The peer's CID ([`HOST_CID`] for the host).
    pub peer_cid: u64,
    /// The peer's port.
    pub peer_port: u32,
}

/// Where a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// REQUEST sent, no answer yet.
    Connecting,
    /// Established: data may flow.
    Connected,
    /// [`Vsock::close`] sent SHUTDOWN both ways; waiting for the peer's
    /// RST (call [`Vsock::abort`] to give up).
    Closing,
}

/// Counters of what the driver did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockStats {
    /// CREDIT_REQUEST packets sent (the peer's credit ran out).
    pub credit_requests_sent: u64,
    /// CREDIT_UPDATE packets sent.
    pub credit_updates_sent: u64,
    /// CREDIT_UPDATE packets received.
    pub credit_updates_received: u64,
    /// Packets received and dropped as malformed.
    pub malformed: u64,
    /// TRANSPORT_RESET events received.
    pub transport_resets: u64,
}

#[derive(Debug, Default)]
struct Owed {
    request: bool,
    response: bool,
    shutdown: u32,
    credit_update: bool,
    credit_request: bool,
}

#[derive(Debug)]
struct Conn {
    state: ConnState,
    owed: Owed,
    buf_alloc: u32,
    fwd_cnt: u32,
    fwd_cnt_sent: u32,
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    /// Received payload not read yet; at most `buf_alloc` bytes.
    rx: VecDeque<u8>,
    peer_shutdown: u32,
    local_shutdown: u32,
    /// A CREDIT_REQUEST went out and the peer has not spoken since.
    asked: bool,
}

impl Conn {
    fn new(state: ConnState, buf_alloc: u32) -> Self {
        Self {
            state,
            owed: Owed::default(),
            buf_alloc,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            rx: VecDeque::new(),
            peer_shutdown: 0,
            local_shutdown: 0,
            asked: false,
        }
    }

    /// `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)` (§5.10.6.3), 0 when the
    /// peer's numbers are inconsistent.
    fn peer_free(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    fn own_free(&self) -> u32 {
        self.buf_alloc
            .saturating_sub(self.rx_cnt.wrapping_sub(self.fwd_cnt))
    }

    fn owes(&self) -> bool {
        let o = &self.owed;
        o.request || o.response || o.shutdown != 0 || o.credit_update || o.credit_request
    }
}

/// A virtio socket device (device ID 19), stream connections.
///
/// # Example
///
/// ```
/// # use vmmio_driver::{vsock::{Vsock, HOST_CID}, Hal, RegisterIo, Result, Transport};
/// fn hello<R: RegisterIo, H: Hal + Clone>(t: Transport<R>, hal: H) -> Result<()> {
///     let mut vs = Vsock::new(t, hal)?;
///     let id = vs.connect(HOST_CID, 1234)?;
///     // Later, after interrupts or polls moved the handshake along:
///     vs.poll()?;
///     let sent = vs.send(id, b"hello")?; // 0 until connected / credit
///     let mut buf = [0u8; 64];
///     let n = vs.recv(id, &mut buf)?; // 0 when nothing arrived
///     log::info!("sent {sent}, read {n}");
///     Ok(())
/// }
/// ```
pub struct Vsock<R: RegisterIo, H: Hal + Clone> {
    transport: Transport<R>,
    hal: H,
    opts: VsockOptions,
    queues: [Option<VirtQueue<H>>; 3],
    rx_buf: Option<Dma<H>>,
    tx_buf: Option<Dma<H>>,
    ev_buf: Option<Dma<H>>,
    /// Slot of each token in flight, by queue then token.
    slot_of: [Vec<Option<usize>>; 3],
    /// Free slots by queue.
    free: [Vec<usize>; 3],
    guest_cid: u64,
    conns: BTreeMap<ConnId, Conn>,
    listeners: BTreeSet<u32>,
    accepted: VecDeque<ConnId>,
    replies: VecDeque<Header>,
    next_port: u32,
    stats: VsockStats,
    broken: bool,
    failed: bool,
}

impl<R: RegisterIo, H: Hal + Clone> core::fmt::Debug for Vsock<R, H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid)
            .field("connections", &self.conns.len())
            .field("broken", &self.broken)
            .finish()
    }
}

impl<R: RegisterIo, H: Hal + Clone> Vsock<R, H> {
    /// Initialises the socket device behind `transport` with default
    /// [`VsockOptions`]; see [`Vsock::with_options`].
    ///
    /// # Errors
    ///
    /// As [`Vsock::with_options`].
    pub fn new(transport: Transport<R>, hal: H) -> Result<Self> {
        Self::with_options(transport, hal, VsockOptions::default())
    }

    /// Initialises the socket device (virtio v1.4 §3.1.1, §5.10.5):
    /// accepts VIRTIO_VSOCK_F_STREAM and VIRTIO_VSOCK_F_NO_IMPLIED_STREAM
    /// when offered (§5.10.3.1: SHOULD), reads `guest_cid`, sets up the
    /// three queues, posts event then rx buffers, sets DRIVER_OK.
    ///
    /// # Errors
    ///
    /// [`Error::WrongDeviceType`], and the errors of
    /// [`Transport::begin_init`], [`Transport::setup_queue`],
    /// [`Transport::finish_init`] (FAILED is set after negotiation).
    pub fn with_options(transport: Transport<R>, hal: H, opts: VsockOptions) -> Result<Self> {
        if transport.device_id() != device_id::VSOCK {
            return Err(Error::WrongDeviceType {
                expected: device_id::VSOCK,
                found: transport.device_id(),
            });
        }
        let mut v = Self {
            transport,
            hal,
            opts,
            queues: [None, None, None],
            rx_buf: None,
            tx_buf: None,
            ev_buf: None,
            slot_of: [Vec::new(), Vec::new(), Vec::new()],
            free: [Vec::new(), Vec::new(), Vec::new()],
            guest_cid: 0,
            conns: BTreeMap::new(),
            listeners: BTreeSet::new(),
            accepted: VecDeque::new(),
            replies: VecDeque::new(),
            next_port: FIRST_EPHEMERAL_PORT,
            stats: VsockStats::default(),
            broken: true,
            failed: false,
        };
        v.start().map(|()| v)
    }

    /// Negotiates and initialises the device; FAILED on error.
    fn start(&mut self) -> Result<()> {
        let r = self
            .transport
            .begin_init(bit(F_STREAM) | bit(F_NO_IMPLIED_STREAM))
            .and_then(|_| self.init_after_features())
            // A TRANSPORT_RESET the device posted at DRIVER_OK (for the
            // connections a reset dropped) must not hit connections opened
            // from now on.
            .and_then(|()| self.poll_events().map(drop));
        self.failed = r.is_err();
        self.broken = r.is_err();
        if r.is_err() {
            self.transport.fail();
        }
        r
    }

    /// Resets the device and initialises it again (after
    /// [`Error::DeviceNeedsReset`], [`Error::Broken`] or a device fault;
    /// see the crate docs, "Recovery after DEVICE_NEEDS_RESET"). Every
    /// connection is gone afterwards (its [`state`](Self::state) is
    /// `None`, its calls fail with [`Error::NoSuchConnection`]), as after
    /// TRANSPORT_RESET (§5.10.6.6); listening ports stay; `guest_cid` is
    /// read again. A TRANSPORT_RESET event the device posts at activation
    /// is handled before this returns.
    ///
    /// # Errors
    ///
    /// As [`with_options`](Self::with_options), and [`Error::Timeout`] for
    /// the reset (the old buffers are then leaked, never freed under the
    /// device).
    pub fn reinit(&mut self) -> Result<()> {
        self.broken = true;
        self.conns.clear();
        self.accepted.clear();
        self.replies.clear();
        let queues = self.queues.iter_mut().filter_map(Option::take);
        if !self.transport.shutdown(queues, true) {
            for b in [self.rx_buf.take(), self.tx_buf.take(), self.ev_buf.take()]
                .into_iter()
                .flatten()
            {
                b.leak();
            }
            return Err(Error::Timeout {
                what: "the device to stop",
            });
        }
        self.start()
    }

    fn init_after_features(&mut self) -> Result<()> {
        // §5.10.4: the upper 32 bits are reserved; keep what the device
        // says (a reserved CID only makes every packet mismatch).
        self.guest_cid = self.transport.read_config_u64(0)?;
        self.rx_buf = Some(Dma::new(self.hal.clone(), RX_BUFFERS * RX_BUFFER_SIZE)?);
        self.tx_buf = Some(Dma::new(self.hal.clone(), TX_SLOTS * TX_SLOT_SIZE)?);
        self.ev_buf = Some(Dma::new(self.hal.clone(), PAGE_SIZE)?);
        let counts = [RX_BUFFERS, TX_SLOTS, EVENT_BUFFERS];
        for (i, index) in [RXQ, TXQ, EVENTQ].into_iter().enumerate() {
            let q = self
                .transport
                .setup_queue(self.hal.clone(), index, DEFAULT_QUEUE_SIZE)?;
            let n = counts[i].min(usize::from(q.size()));
            self.slot_of[i] = Vec::new();
            self.slot_of[i].resize(usize::from(q.size()), None);
            self.free[i] = (0..n).rev().collect();
            self.queues[i] = Some(q);
        }
        // §5.10.5: event buffers, then rx buffers, before DRIVER_OK.
        self.post(2)?;
        self.post(0)?;
        self.transport.finish_init()?;
        for i in [2, 0] {
            if let Some(q) = self.queues[i].as_mut() {
                self.transport.notify(q)?;
            }
        }
        Ok(())
    }

    /// Posts every free slot of queue `i` (0 rx, 2 event) as a
    /// device-writable buffer.
    fn post(&mut self, i: usize) -> Result<usize> {
        let (buf, size, len) = match i {
            0 => (self.rx_buf.as_ref(), RX_BUFFER_SIZE, RX_BUFFER_LEN),
            _ => (self.ev_buf.as_ref(), 8, EVENT_LEN),
        };
        let (Some(q), Some(buf)) = (self.queues[i].as_mut(), buf) else {
            return Err(Error::Broken);
        };
        let mut posted = 0;
        while let Some(slot) = self.free[i].pop() {
            let seg = Segment {
                addr: buf.paddr() + (slot * size) as u64,
                len,
            };
            // SAFETY: the slot is a disjoint part of this driver's DMA
            // buffer, read again only after its chain completes; the buffer
            // is leaked, not freed, if the device never stops.
            match unsafe { q.add_segments(&[], &[seg]) } {
                Ok(token) => {
                    if let Some(s) = self.slot_of[i].get_mut(usize::from(token)) {
                        *s = Some(slot);
                    }
                    posted += 1;
                }
                Err(e) => {
                    self.free[i].push(slot);
                    return Err(e);
                }
            }
        }
        Ok(posted)
    }

    /// The guest's CID, as last read from `guest_cid`.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// What the driver counted so far.
    pub fn stats(&self) -> VsockStats {
        self.stats
    }

    /// The transport.
    pub fn transport(&mut self) -> &mut Transport<R> {
        &mut self.transport
    }

    /// Accepts connections to local `port` from now on (they are answered
    /// with RESPONSE and wait for [`Vsock::accept`]).
    ///
    /// # Errors
    ///
    /// [`Error::PortInUse`] when `port` is already listened on.
    pub fn listen(&mut self, port: u32) -> Result<()> {
        if !self.listeners.insert(port) {
            return Err(Error::PortInUse(port));
        }
        Ok(())
    }

    /// Stops listening on `port` (accepted connections stay).
    pub fn unlisten(&mut self, port: u32) {
        self.listeners.remove(&port);
    }

    /// The next established connection to listening `port`, if any.
    pub fn accept(&mut self, port: u32) -> Option<ConnId> {
        let i = self.accepted.iter().position(|id| id.local_port == port)?;
        self.accepted.remove(i)
    }

    /// Opens a connection to `peer_cid:peer_port` from a free local port:
    /// sends REQUEST. The connection is [`ConnState::Connecting`] until the
    /// peer answers; `state` becomes `None` when it refuses.
    ///
    /// # Errors
    ///
    /// [`Error::ConnectionLimit`], [`Error::PortInUse`] (no free local
    /// port), [`Error::Broken`], and queue errors.
    pub fn connect(&mut self, peer_cid: u64, peer_port: u32) -> Result<ConnId> {
        if self.broken {
            return Err(Error::Broken);
        }
        if self.conns.len() >= self.opts.max_connections {
            return Err(Error::ConnectionLimit(self.opts.max_connections));
        }
        let mut id = None;
        // At most `max_connections + 1` ports are tried.
        for _ in 0..=self.opts.max_connections {
            let p = self.next_port;
            self.next_port = p.checked_add(1).unwrap_or(FIRST_EPHEMERAL_PORT);
            let cand = ConnId {
                local_port: p,
                peer_cid,
                peer_port,
            };
            if !self.conns.contains_key(&cand) && !self.listeners.contains(&p) {
                id = Some(cand);
                break;
            }
        }
        let id = id.ok_or(Error::PortInUse(self.next_port))?;
        let mut c = Conn::new(ConnState::Connecting, self.opts.buf_alloc);
        c.owed.request = true;
        self.conns.insert(id, c);
        self.flush()?;
        Ok(id)
    }

    /// Where connection `id` is; `None` when it is gone (refused, reset,
    /// or closed).
    pub fn state(&self, id: ConnId) -> Option<ConnState> {
        self.conns.get(&id).map(|c| c.state)
    }

    /// Whether the peer will send no more on `id` (SHUTDOWN with the send
    /// flag) and every byte it sent was read: [`Vsock::recv`] returns 0
    /// for good. True for a connection that is gone.
    pub fn is_eof(&self, id: ConnId) -> bool {
        self.conns
            .get(&id)
            .is_none_or(|c| c.peer_shutdown & SHUTDOWN_F_SEND != 0 && c.rx.is_empty())
    }

    /// Bytes the peer may still receive on `id` before it frees space.
    pub fn peer_credit(&self, id: ConnId) -> u32 {
        self.conns.get(&id).map_or(0, Conn::peer_free)
    }

    /// Sends as much of `data` on `id` as the peer's credit and the free
    /// transmit slots allow, in packets of at most [`MAX_TX_PAYLOAD`]
    /// bytes; returns the bytes sent (0 when none could go: then, if the
    /// credit is the reason, a CREDIT_REQUEST asks the peer for news).
    /// Never waits.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchConnection`], [`Error::NotConnected`] (connecting,
    /// closing, or sending shut down), [`Error::Broken`], queue errors.
    pub fn send(&mut self, id: ConnId, data: &[u8]) -> Result<usize> {
        self.reclaim_tx()?;
        let mut sent = 0;
        while sent < data.len() {
            let c = self.conns.get_mut(&id).ok_or(Error::NoSuchConnection)?;
            if c.state != ConnState::Connected
                || c.local_shutdown & SHUTDOWN_F_SEND != 0
                || c.peer_shutdown & SHUTDOWN_F_RECEIVE != 0
            {
                return Err(Error::NotConnected);
            }
            let credit = c.peer_free() as usize;
            if credit == 0 {
                // Ask once until the peer speaks again.
                if !c.asked {
                    c.asked = true;
                    c.owed.credit_request = true;
                }
                break;
            }
            if self.free[1].is_empty() {
                break;
            }
            let n = (data.len() - sent).min(credit).min(MAX_TX_PAYLOAD);
            self.emit(id, op::RW, 0, &data[sent..sent + n])?;
            sent += n;
        }
        self.flush()?;
        Ok(sent)
    }

    /// Copies received bytes of `id` into `out`; returns how many (0 when
    /// none arrived: see [`Vsock::is_eof`]). Frees credit for the peer and
    /// tells it with CREDIT_UPDATE once a quarter of `buf_alloc` is free
    /// again. Never waits.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchConnection`], [`Error::Broken`], queue errors.
    pub fn recv(&mut self, id: ConnId, out: &mut [u8]) -> Result<usize> {
        self.poll()?;
        let c = self.conns.get_mut(&id).ok_or(Error::NoSuchConnection)?;
        let n = out.len().min(c.rx.len());
        for (o, b) in out.iter_mut().zip(c.rx.drain(..n)) {
            *o = b;
        }
        // `n <= rx.len() <= buf_alloc`, a u32.
        c.fwd_cnt = c.fwd_cnt.wrapping_add(u32::try_from(n).unwrap_or(u32::MAX));
        if c.fwd_cnt.wrapping_sub(c.fwd_cnt_sent) >= (c.buf_alloc / 4).max(1) {
            c.owed.credit_update = true;
        }
        self.flush()?;
        Ok(n)
    }

    /// Sends SHUTDOWN with `flags` ([`SHUTDOWN_F_RECEIVE`],
    /// [`SHUTDOWN_F_SEND`]) on `id`: hints that are permanent (§5.10.6.5).
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchConnection`], [`Error::Broken`], queue errors.
    pub fn shutdown(&mut self, id: ConnId, flags: u32) -> Result<()> {
        let c = self.conns.get_mut(&id).ok_or(Error::NoSuchConnection)?;
        let flags = flags & (SHUTDOWN_F_RECEIVE | SHUTDOWN_F_SEND);
        c.local_shutdown |= flags;
        c.owed.shutdown |= flags;
        self.flush()
    }

    /// Closes `id` cleanly (§5.10.6.5): SHUTDOWN both ways, then the
    /// connection is [`ConnState::Closing`] until the peer's RST removes
    /// it. The spec leaves the wait to the implementation: call
    /// [`Vsock::abort`] when it has lasted too long.
    ///
    /// # Errors
    ///
    /// As [`Vsock::shutdown`].
    pub fn close(&mut self, id: ConnId) -> Result<()> {
        self.shutdown(id, SHUTDOWN_F_RECEIVE | SHUTDOWN_F_SEND)?;
        if let Some(c) = self.conns.get_mut(&id) {
            c.state = ConnState::Closing;
        }
        Ok(())
    }

    /// Forcibly disconnects `id`: RST, and the connection is gone.
    ///
    /// # Errors
    ///
    /// [`Error::Broken`], queue errors.
    pub fn abort(&mut self, id: ConnId) -> Result<()> {
        if self.conns.remove(&id).is_some() {
            self.push_reply(self.header(id, op::RST, 0, 0));
        }
        self.flush()
    }

    /// Handles an interrupt: acknowledges it, then [`Vsock::poll`]s.
    ///
    /// # Errors
    ///
    /// [`Error::DeviceNeedsReset`] (the driver is then broken until
    /// [`reinit`](Self::reinit)), and as [`Vsock::poll`].
    pub fn handle_interrupt(&mut self) -> Result<InterruptEvents> {
        let ev = self
            .transport
            .ack_interrupt()
            .inspect_err(|_| self.broken = true)?;
        self.poll()?;
        Ok(ev)
    }

    /// Moves packets: takes back transmit slots, handles received packets
    /// and events, reposts their buffers, sends owed control packets. A
    /// poll that moved nothing while connections are open reads `Status`
    /// (a device that needs a reset would leave them waiting for good).
    ///
    /// # Errors
    ///
    /// [`Error::Broken`], [`Error::DeviceNeedsReset`], and the used-ring
    /// errors of [`VirtQueue::pop_used`]; the driver is broken after any
    /// of them until [`reinit`](Self::reinit).
    pub fn poll(&mut self) -> Result<()> {
        if self.broken {
            return Err(Error::Broken);
        }
        let r = self.poll_inner();
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    fn poll_inner(&mut self) -> Result<()> {
        let moved = self.reclaim_tx()? + self.poll_events()? + self.poll_rx()?;
        if moved == 0 && !self.conns.is_empty() {
            self.transport.check_status()?;
        }
        self.flush()
    }

    /// Takes back completed transmit slots; returns how many.
    fn reclaim_tx(&mut self) -> Result<usize> {
        if self.broken {
            return Err(Error::Broken);
        }
        let Some(q) = self.queues[1].as_mut() else {
            return Err(Error::Broken);
        };
        let mut n = 0;
        for _ in 0..q.size() {
            let Some(used) = q.pop_used()? else { break };
            n += 1;
            if let Some(slot) = self.slot_of[1]
                .get_mut(usize::from(used.token))
                .and_then(Option::take)
            {
                self.free[1].push(slot);
            }
        }
        Ok(n)
    }

    /// Handles used event buffers; returns how many.
    fn poll_events(&mut self) -> Result<usize> {
        let mut got = 0;
        let mut used_n = 0;
        {
            let (Some(q), Some(buf)) = (self.queues[2].as_mut(), self.ev_buf.as_ref()) else {
                return Err(Error::Broken);
            };
            for _ in 0..q.size() {
                let Some(used) = q.pop_used()? else { break };
                let Some(slot) = self.slot_of[2]
                    .get_mut(usize::from(used.token))
                    .and_then(Option::take)
                else {
                    continue;
                };
                let mut id = [0u8; EVENT_SIZE];
                if used.len as usize >= EVENT_SIZE {
                    buf.read_bytes(slot * 8, &mut id)?;
                    if u32::from_le_bytes(id) == EVENT_TRANSPORT_RESET {
                        got += 1;
                    }
                }
                self.free[2].push(slot);
                used_n += 1;
            }
        }
        if got > 0 {
            self.transport_reset()?;
        }
        if self.post(2)? > 0 {
            if let Some(q) = self.queues[2].as_mut() {
                self.transport.notify_if_needed(q)?;
            }
        }
        Ok(used_n)
    }

    /// §5.10.6.6: re-read `guest_cid`, drop established connections, keep
    /// listeners.
    fn transport_reset(&mut self) -> Result<()> {
        self.stats.transport_resets += 1;
        self.guest_cid = self.transport.read_config_u64(0)?;
        self.conns.clear();
        self.accepted.clear();
        self.replies.clear();
        Ok(())
    }

    /// Handles used rx buffers; returns how many.
    fn poll_rx(&mut self) -> Result<usize> {
        let mut used_n = 0;
        let mut tmp = [0u8; RX_BUFFER_SIZE];
        let size = self.queues[0].as_ref().map_or(0, VirtQueue::size);
        for _ in 0..size {
            let (Some(q), Some(buf)) = (self.queues[0].as_mut(), self.rx_buf.as_ref()) else {
                return Err(Error::Broken);
            };
            let Some(used) = q.pop_used()? else { break };
            let Some(slot) = self.slot_of[0]
                .get_mut(usize::from(used.token))
                .and_then(Option::take)
            else {
                continue;
            };
            // `len` was checked against the posted buffer.
            let n = usize::try_from(used.len).unwrap_or(0).min(RX_BUFFER_SIZE);
            buf.read_bytes(slot * RX_BUFFER_SIZE, &mut tmp[..n])?;
            self.free[0].push(slot);
            self.packet(&tmp[..n]);
            used_n += 1;
        }
        if self.post(0)? > 0 {
            if let Some(q) = self.queues[0].as_mut() {
                self.transport.notify_if_needed(q)?;
            }
        }
        Ok(used_n)
    }

    fn push_reply(&mut self, h: Header) {
        if self.replies.len() < MAX_REPLIES {
            self.replies.push_back(h);
        }
    }

    /// Answers packet `h` with RST (never a RST with a RST).
    fn reply_rst(&mut self, h: &Header) {
        if h.op.get() == op::RST {
            return;
        }
        self.push_reply(Header {
            src_cid: h.dst_cid,
            dst_cid: h.src_cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            type_: h.type_,
            op: Le16::new(op::RST),
            ..Header::default()
        });
    }

    fn reset_conn(&mut self, id: ConnId) {
        if self.conns.remove(&id).is_some() {
            self.push_reply(self.header(id, op::RST, 0, 0));
        }
    }

    /// Handles one received packet (`pkt`: the bytes the device wrote).
    fn packet(&mut self, pkt: &[u8]) {
        let Some(hb) = pkt.first_chunk::<HEADER_SIZE>() else {
            self.stats.malformed += 1;
            return;
        };
        let h = Header::from_bytes(hb);
        let Some(payload) = usize::try_from(h.len.get())
            .ok()
            .and_then(|len| pkt.get(HEADER_SIZE..HEADER_SIZE.checked_add(len)?))
        else {
            self.stats.malformed += 1;
            return;
        };
        if h.dst_cid.get() != self.guest_cid {
            self.stats.malformed += 1;
            return;
        }
        if h.type_.get() != TYPE_STREAM {
            // §5.10.6.4 (driver): RST for an unknown type.
            return self.reply_rst(&h);
        }
        let id = ConnId {
            local_port: h.dst_port.get(),
            peer_cid: h.src_cid.get(),
            peer_port: h.src_port.get(),
        };
        let opc = h.op.get();
        if opc == op::REQUEST {
            return self.request(&h, id);
        }
        let Some(c) = self.conns.get_mut(&id) else {
            return self.reply_rst(&h);
        };
        c.peer_buf_alloc = h.buf_alloc.get();
        c.peer_fwd_cnt = h.fwd_cnt.get();
        c.asked = false;
        match (opc, c.state) {
            (op::RESPONSE, ConnState::Connecting) => c.state = ConnState::Connected,
            (op::RST, _) => {
                self.conns.remove(&id);
            }
            (op::SHUTDOWN, ConnState::Connected | ConnState::Closing) => {
                c.peer_shutdown |= h.flags.get() & (SHUTDOWN_F_RECEIVE | SHUTDOWN_F_SEND);
                if c.peer_shutdown == SHUTDOWN_F_RECEIVE | SHUTDOWN_F_SEND && c.rx.is_empty() {
                    // The peer closed and nothing is left to read: end the
                    // clean disconnect with RST.
                    self.reset_conn(id);
                }
            }
            (op::RW, ConnState::Connected | ConnState::Closing)
                if c.peer_shutdown & SHUTDOWN_F_SEND == 0 =>
            {
                // `payload.len() <= RX_BUFFER_SIZE`.
                let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
                if len > c.own_free() {
                    // The device sent beyond the credit it was given.
                    self.stats.malformed += 1;
                    return self.reset_conn(id);
                }
                c.rx_cnt = c.rx_cnt.wrapping_add(len);
                if c.local_shutdown & SHUTDOWN_F_RECEIVE == 0 {
                    c.rx.extend(payload);
                } else {
                    // Nobody will read it: count it consumed.
                    c.fwd_cnt = c.fwd_cnt.wrapping_add(len);
                }
            }
            (op::CREDIT_UPDATE, _) => self.stats.credit_updates_received += 1,
            (op::CREDIT_REQUEST, _) => c.owed.credit_update = true,
            _ => {
                self.stats.malformed += 1;
                self.reset_conn(id);
            }
        }
    }

    fn request(&mut self, h: &Header, id: ConnId) {
        if self.conns.contains_key(&id)
            || !self.listeners.contains(&id.local_port)
            || self.conns.len() >= self.opts.max_connections
        {
            return self.reply_rst(h);
        }
        let mut c = Conn::new(ConnState::Connected, self.opts.buf_alloc);
        c.peer_buf_alloc = h.buf_alloc.get();
        c.peer_fwd_cnt = h.fwd_cnt.get();
        c.owed.response = true;
        self.conns.insert(id, c);
        self.accepted.push_back(id);
    }

    fn header(&self, id: ConnId, opc: u16, flags: u32, len: u32) -> Header {
        let (buf_alloc, fwd_cnt) = self
            .conns
            .get(&id)
            .map_or((0, 0), |c| (c.buf_alloc, c.fwd_cnt));
        Header {
            src_cid: Le64::new(self.guest_cid),
            dst_cid: Le64::new(id.peer_cid),
            src_port: Le32::new(id.local_port),
            dst_port: Le32::new(id.peer_port),
            len: Le32::new(len),
            type_: Le16::new(TYPE_STREAM),
            op: Le16::new(opc),
            flags: Le32::new(flags),
            buf_alloc: Le32::new(buf_alloc),
            fwd_cnt: Le32::new(fwd_cnt),
        }
    }

    /// Sends one packet of connection `id` from a free transmit slot (the
    /// caller checked there is one).
    fn emit(&mut self, id: ConnId, opc: u16, flags: u32, payload: &[u8]) -> Result<()> {
        // `payload.len() <= MAX_TX_PAYLOAD`.
        let len = u32::try_from(payload.len()).unwrap_or(0);
        let h = self.header(id, opc, flags, len);
        self.emit_header(&h, payload)?;
        if let Some(c) = self.conns.get_mut(&id) {
            // Every packet carries the credit (§5.10.6.3).
            c.fwd_cnt_sent = c.fwd_cnt;
            c.owed.credit_update = false;
            c.tx_cnt = c.tx_cnt.wrapping_add(len);
        }
        Ok(())
    }

    fn emit_header(&mut self, h: &Header, payload: &[u8]) -> Result<()> {
        let slot = self.free[1].pop().ok_or(Error::Broken)?;
        let (Some(q), Some(buf)) = (self.queues[1].as_mut(), self.tx_buf.as_mut()) else {
            return Err(Error::Broken);
        };
        let at = slot * TX_SLOT_SIZE;
        let r = buf
            .write_bytes(at, &h.to_bytes())
            .and_then(|()| buf.write_bytes(at + HEADER_SIZE, payload));
        let seg = Segment {
            addr: buf.paddr() + at as u64,
            // `HEADER_SIZE + payload.len() <= TX_SLOT_SIZE`.
            len: u32::try_from(HEADER_SIZE + payload.len()).unwrap_or(0),
        };
        // SAFETY: the slot is a disjoint part of this driver's transmit
        // buffer, written again only after its chain completes; the buffer
        // is leaked, not freed, if the device never stops.
        let r = r.and_then(|()| unsafe { q.add_segments(&[seg], &[]) });
        match r {
            Ok(token) => {
                if let Some(s) = self.slot_of[1].get_mut(usize::from(token)) {
                    *s = Some(slot);
                }
                self.transport.notify_if_needed(q)?;
                Ok(())
            }
            Err(e) => {
                self.free[1].push(slot);
                Err(e)
            }
        }
    }

    /// Sends owed packets while transmit slots are free: replies first,
    /// then each connection's REQUEST, RESPONSE, SHUTDOWN, CREDIT_REQUEST,
    /// CREDIT_UPDATE.
    fn flush(&mut self) -> Result<()> {
        self.reclaim_tx()?;
        while !self.free[1].is_empty() {
            let Some(h) = self.replies.pop_front() else {
                break;
            };
            self.emit_header(&h, &[])?;
        }
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.owes())
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            loop {
                if self.free[1].is_empty() {
                    return Ok(());
                }
                let Some(c) = self.conns.get_mut(&id) else {
                    break;
                };
                let o = &mut c.owed;
                let (opc, flags) = if core::mem::take(&mut o.request) {
                    (op::REQUEST, 0)
                } else if core::mem::take(&mut o.response) {
                    (op::RESPONSE, 0)
                } else if o.shutdown != 0 {
                    (op::SHUTDOWN, core::mem::take(&mut o.shutdown))
                } else if core::mem::take(&mut o.credit_request) {
                    self.stats.credit_requests_sent += 1;
                    (op::CREDIT_REQUEST, 0)
                } else if o.credit_update {
                    self.stats.credit_updates_sent += 1;
                    (op::CREDIT_UPDATE, 0)
                } else {
                    break;
                };
                self.emit(id, opc, flags, &[])?;
            }
        }
        Ok(())
    }
}

impl<R: RegisterIo, H: Hal + Clone> Drop for Vsock<R, H> {
    fn drop(&mut self) {
        // As the other class drivers: reset unless initialisation failed,
        // stop the queues, leak what the device may still use.
        let queues = self.queues.iter_mut().filter_map(Option::take);
        if !self.transport.shutdown(queues, !self.failed) {
            for b in [self.rx_buf.take(), self.tx_buf.take(), self.ev_buf.take()]
                .into_iter()
                .flatten()
            {
                b.leak();
            }
        }
    }
}

#[cfg(test)]
mod tests;
