//! The virtio socket device (virtio v1.4 §5.10 "Socket Device"): stream
//! connections between guest ports and host programs on Unix sockets.
//!
//! Queues: rx (0, device to guest), tx (1, guest to device), event (2).
//! Offered features: `VIRTIO_VSOCK_F_STREAM` and
//! `VIRTIO_VSOCK_F_NO_IMPLIED_STREAM` (§5.10.3.2: the device SHOULD offer
//! it; a driver that knows neither bit gets stream sockets, as the spec
//! implies), plus `VIRTIO_F_INDIRECT_DESC`, `VIRTIO_F_EVENT_IDX` and
//! `VIRTIO_F_RING_RESET`. Seqpacket is not offered.
//!
//! # Host side
//! Firecracker's "hybrid vsock" convention on Unix sockets (module `host`):
//! the device listens on `PATH`; a host program connects, writes
//! `CONNECT <port>\n` and reads `OK <host_port>\n` once the guest listening
//! on `port` accepted; a guest connecting to CID 2 port `P` reaches the host
//! program listening on `PATH_P`. Every host socket is non-blocking and
//! listed through [`VirtioDevice::backend_fds`] (readable interest while
//! the guest has credit, writable interest while bytes wait for room), so
//! the device never waits for a host program on the guest's CPU.
//!
//! # Limits (a guest cannot make the host allocate without bound)
//! - at most [`VsockOptions::max_connections`] connections (default
//!   [`MAX_CONNECTIONS`]), host programs still in their `CONNECT` line
//!   included: a REQUEST beyond it is answered with RST, a host program
//!   beyond it is disconnected; a handshake not finished within
//!   [`VsockOptions::connect_timeout`] (a host program's `CONNECT` line,
//!   the guest's answer to a REQUEST) is dropped, on time: the device
//!   lists a timer fd for the earliest deadline;
//! - `accept` failing for a host reason (EMFILE, ENFILE, ...) is logged and
//!   the listener left alone for `ACCEPT_BACKOFF` (100 ms): a
//!   listening socket stays readable while programs wait, so retrying at
//!   once would spin the polling thread;
//! - per connection at most `buf_alloc` bytes (default [`BUF_ALLOC`]) of
//!   guest payload wait for the host program, which is exactly the credit
//!   the guest is given (§5.10.6.3): a guest sending beyond its credit is
//!   reset; and at most [`STAGE_SIZE`] bytes read from the host wait for an
//!   rx buffer, never more than the guest's credit allows;
//! - RST replies to packets of no connection wait in a queue of at most
//!   [`VsockOptions::max_replies`] (default [`MAX_REPLIES`]) plus one per
//!   connection reset; while it is full the tx queue is not processed (the
//!   "additional resources" of §5.10.6.1 are exhausted) until the guest
//!   processes its rx queue.
//!
//! Every field the guest controls is checked: a header shorter than 44
//! bytes or a `len` beyond the chain is dropped (a connection it names is
//! reset), `src_cid` must be the guest's CID, `dst_cid` the host's, `type`
//! must be stream (else RST, §5.10.6.4), `op` must be known and fit the
//! connection's state (else RST), and `len` at most [`MAX_PKT_PAYLOAD`].

mod alarm;
mod conn;
pub(crate) mod host;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::Path;

use vm_memory::GuestMemory;
use vmmio_device::queue::Descriptor;
use vmmio_device::{
    ActivateError, BackendFd, DescriptorChain, InterruptStatus, Queue, VirtioDevice,
};
use vmmio_spec::device_id;
use vmmio_spec::features::{bit, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_RESET};
use vmmio_spec::notification::NotificationData;
use vmmio_spec::vsock::{
    self as spec, op, EVENT_SIZE, EVENT_TRANSPORT_RESET, SHUTDOWN_F_RECEIVE, SHUTDOWN_F_SEND,
    TYPE_STREAM,
};
pub use vmmio_spec::vsock::{
    Header, EVENTQ, F_NO_IMPLIED_STREAM, F_SEQPACKET, F_STREAM, HEADER_SIZE, HOST_CID, RXQ, TXQ,
};
use vmmio_spec::{Le16, Le32, Le64};

use crate::chain::{ChainLayout, LogLimiter, MoreWork, Region, Served};
use alarm::Alarm;
use conn::{Conn, State};
use host::{Listener, Pending};

/// `QueueSizeMax` of the three queues, in descriptors.
pub const QUEUE_SIZE: u16 = 256;
/// Default connection limit (host programs in their `CONNECT` line
/// included).
pub const MAX_CONNECTIONS: usize = 1024;
/// Default receive buffer space the device grants the guest per
/// connection, in bytes (`buf_alloc`).
pub const BUF_ALLOC: u32 = 64 * 1024;
/// Largest payload of one packet, in bytes, either way (Linux's
/// `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`); a guest packet claiming more is
/// answered with RST.
pub const MAX_PKT_PAYLOAD: u32 = 64 * 1024;
/// Most bytes read from one host stream ahead of the rx buffers, in bytes.
pub const STAGE_SIZE: usize = 16 * 1024;
/// Most RST replies to packets of no connection waiting for rx buffers.
pub const MAX_REPLIES: usize = 1024;
/// Default [`VsockOptions::connect_timeout`] (as Firecracker's 2 s).
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// First host port handed to host-initiated connections (as Firecracker:
/// far above the ports host programs listen on).
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Token of the listening socket in [`VirtioDevice::backend_fds`].
const LISTENER_TOKEN: u64 = 0;
/// Host programs accepted per listener event (the rest on the next one).
const ACCEPT_BATCH: usize = 16;

/// Tunables of a [`Vsock`].
#[derive(Clone, Copy, Debug)]
pub struct VsockOptions {
    /// Connection limit; see the module docs. Default [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// Credit granted per connection in bytes. Default [`BUF_ALLOC`].
    pub buf_alloc: u32,
    /// `QueueSizeMax` of every queue (clamped to 1..=32768). Default
    /// [`QUEUE_SIZE`].
    pub queue_size: u16,
    /// RST replies waiting for rx buffers before the tx queue is held
    /// back. Default [`MAX_REPLIES`].
    pub max_replies: usize,
    /// How long a host program may take to send its `CONNECT` line, and
    /// the guest to answer the REQUEST that follows, before the device
    /// gives up (RST to the guest, the host program disconnected). The
    /// device's timer fd (listed in `backend_fds` while a handshake runs)
    /// ends it on time, with no other event. Default [`CONNECT_TIMEOUT`].
    pub connect_timeout: std::time::Duration,
}

impl Default for VsockOptions {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            buf_alloc: BUF_ALLOC,
            queue_size: QUEUE_SIZE,
            max_replies: MAX_REPLIES,
            connect_timeout: CONNECT_TIMEOUT,
        }
    }
}

/// Why a [`Vsock`] could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The CID is reserved (0, 1, 2, `0xffffffff`) or above 32 bits
    /// (virtio v1.4 §5.10.4: the device MUST NOT offer a reserved CID).
    #[error("guest CID {0} is reserved")]
    ReservedCid(u64),
    /// Binding the listening socket failed (the path exists, ...).
    #[error("cannot listen on {path}")]
    Listen {
        /// The socket path.
        path: std::path::PathBuf,
        /// The host error.
        #[source]
        source: io::Error,
    },
}

/// State between `activate` and `reset`.
struct Active<M> {
    mem: M,
    interrupt: InterruptStatus,
    queues: [Option<Queue>; 3],
    broken: [bool; 3],
}

/// A virtio socket device (device ID 19) with its host side on Unix
/// sockets.
///
/// # Example
/// ```no_run
/// use vmmio_devices::vsock::Vsock;
/// # type Mem = vm_memory::GuestMemoryMmap<()>;
/// // Guest CID 3; host programs connect to /run/vm.sock, the guest's
/// // connections to host port P reach /run/vm.sock_P.
/// let dev: Vsock<Mem> = Vsock::new(3, "/run/vm.sock")?;
/// # Ok::<(), vmmio_devices::vsock::VsockError>(())
/// ```
pub struct Vsock<M> {
    proto: Proto,
    active: Option<Active<M>>,
    chain: DescriptorChain,
    queue_max_sizes: [u16; 3],
    broken_log: LogLimiter,
    /// Wakes the device for chains left at the per-call cap.
    more: MoreWork,
    /// Wakes the device at the next handshake deadline.
    alarm: Alarm,
}

impl<M> std::fmt::Debug for Vsock<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.proto.guest_cid)
            .field("path", &self.proto.listener.path)
            .field("connections", &self.proto.conns.len())
            .field("active", &self.active.is_some())
            .finish()
    }
}

/// The connection protocol and the host sockets: everything but the
/// queues.
struct Proto {
    guest_cid: u64,
    opts: VsockOptions,
    listener: Listener,
    conns: BTreeMap<u64, Conn>,
    /// `(host port, guest port)` to connection token.
    by_addr: HashMap<(u32, u32), u64>,
    pending: BTreeMap<u64, Pending>,
    next_token: u64,
    next_local_port: u32,
    /// RST replies to packets of no connection.
    replies: VecDeque<Header>,
    /// Last connection served an rx buffer (round robin).
    cursor: u64,
    /// A TRANSPORT_RESET event is owed (§5.10.6.6).
    transport_reset: bool,
    /// `accept` failed for a host reason: the listener is not listed
    /// until then ([`host::ACCEPT_BACKOFF`]).
    accept_paused: Option<std::time::Instant>,
    /// Copy buffer for guest payload, [`MAX_PKT_PAYLOAD`] bytes.
    scratch: Vec<u8>,
    malformed: LogLimiter,
    refused: LogLimiter,
    host_errors: LogLimiter,
}

impl<M> Vsock<M> {
    /// A device with guest CID `guest_cid` listening on `path`, with
    /// default [`VsockOptions`].
    ///
    /// # Errors
    /// [`VsockError::ReservedCid`]; [`VsockError::Listen`] when `path`
    /// cannot be bound (it exists, its directory does not, ...).
    pub fn new(guest_cid: u64, path: impl AsRef<Path>) -> Result<Self, VsockError> {
        Self::with_options(guest_cid, path, VsockOptions::default())
    }

    /// As [`Vsock::new`] with `opts`.
    ///
    /// # Errors
    /// As [`Vsock::new`].
    pub fn with_options(
        guest_cid: u64,
        path: impl AsRef<Path>,
        opts: VsockOptions,
    ) -> Result<Self, VsockError> {
        if !spec::is_valid_guest_cid(guest_cid) {
            return Err(VsockError::ReservedCid(guest_cid));
        }
        let path = path.as_ref();
        let listener = Listener::bind(path).map_err(|source| VsockError::Listen {
            path: path.to_owned(),
            source,
        })?;
        let size = opts.queue_size.clamp(1, 32768);
        Ok(Self {
            proto: Proto {
                guest_cid,
                opts,
                listener,
                conns: BTreeMap::new(),
                by_addr: HashMap::new(),
                pending: BTreeMap::new(),
                next_token: LISTENER_TOKEN + 1,
                next_local_port: FIRST_LOCAL_PORT,
                replies: VecDeque::new(),
                cursor: 0,
                transport_reset: false,
                accept_paused: None,
                scratch: vec![0; MAX_PKT_PAYLOAD as usize],
                malformed: LogLimiter::default(),
                refused: LogLimiter::default(),
                host_errors: LogLimiter::default(),
            },
            active: None,
            chain: DescriptorChain::new(),
            queue_max_sizes: [size; 3],
            broken_log: LogLimiter::default(),
            more: MoreWork::default(),
            alarm: Alarm::default(),
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.proto.guest_cid
    }

    /// Open connections (host programs in their `CONNECT` line not
    /// counted).
    pub fn connections(&self) -> usize {
        self.proto.conns.len()
    }
}

impl<M: GuestMemory> Vsock<M> {
    /// Runs the device until nothing moves: guest packets, host writes,
    /// host reads, rx packets, events. Twice, so that rx buffers freeing
    /// the reply queue let held-back tx packets through.
    /// `alarm_fired`: the timer fd is readable (it is re-armed either way).
    fn pump(&mut self, alarm_fired: bool) {
        self.proto.expire();
        for _ in 0..2 {
            self.serve(TXQ);
            self.proto.flush_all();
            self.proto.stage_all();
            self.serve(RXQ);
            self.serve(EVENTQ);
        }
        self.alarm.set(self.proto.next_deadline(), alarm_fired);
    }

    fn serve(&mut self, index: u16) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let i = usize::from(index);
        let Some(queue) = active.queues[i].as_mut() else {
            return;
        };
        let served = Served {
            name: "virtio-vsock",
            queue,
            broken: &mut active.broken[i],
            mem: &active.mem,
            interrupt: &active.interrupt,
            chain: &mut self.chain,
            broken_log: &mut self.broken_log,
            more: &mut self.more,
        };
        match index {
            TXQ => served.serve(
                &mut self.proto,
                |p| p.replies.len() < p.opts.max_replies,
                |p, mem, descs| {
                    p.handle_tx(mem, descs);
                    // The device writes nothing into tx buffers.
                    0
                },
            ),
            RXQ => served.serve(&mut self.proto, Proto::has_rx, Proto::fill_rx),
            _ => served.serve(&mut self.proto, |p| p.transport_reset, Proto::fill_event),
        }
    }
}

impl Proto {
    fn log_malformed(&mut self, what: std::fmt::Arguments<'_>) {
        log::log!(self.malformed.level(), "virtio-vsock: {what}");
    }

    /// A header from the host `(HOST_CID, local_port)` to the guest's
    /// `peer_port`, without credit fields.
    fn header(&self, local_port: u32, peer_port: u32, op: u16) -> Header {
        Header {
            src_cid: Le64::new(HOST_CID),
            dst_cid: Le64::new(self.guest_cid),
            src_port: Le32::new(local_port),
            dst_port: Le32::new(peer_port),
            type_: Le16::new(TYPE_STREAM),
            op: Le16::new(op),
            ..Header::default()
        }
    }

    /// Answers guest packet `h` with RST (never a RST with a RST).
    fn reply_rst(&mut self, h: &Header) {
        if h.op.get() == op::RST {
            return;
        }
        self.replies.push_back(Header {
            src_cid: h.dst_cid,
            dst_cid: h.src_cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            type_: h.type_,
            op: Le16::new(op::RST),
            ..Header::default()
        });
    }

    /// Drops connection `token` (closing its host stream) and tells the
    /// guest with RST, which carries the flow's credit as every packet of
    /// it must (§5.10.6.3.2).
    fn reset(&mut self, token: u64) {
        if let Some(c) = self.remove(token) {
            let mut rst = self.header(c.local_port, c.peer_port, op::RST);
            rst.buf_alloc = Le32::new(c.buf_alloc);
            rst.fwd_cnt = Le32::new(c.fwd_cnt);
            self.replies.push_back(rst);
        }
    }

    fn remove(&mut self, token: u64) -> Option<Conn> {
        let c = self.conns.remove(&token)?;
        self.by_addr.remove(&(c.local_port, c.peer_port));
        Some(c)
    }

    /// Handles one tx chain: a header and its payload.
    fn handle_tx<M: GuestMemory>(&mut self, mem: &M, descs: &[Descriptor]) {
        let layout = match ChainLayout::split(descs) {
            Ok(l) => l,
            Err(e) => return self.log_malformed(format_args!("malformed tx chain: {e}")),
        };
        let hdr_len = HEADER_SIZE as u64;
        if layout.readable_len < hdr_len {
            return self.log_malformed(format_args!(
                "tx packet of {} bytes, shorter than its header",
                layout.readable_len
            ));
        }
        let mut b = [0u8; HEADER_SIZE];
        if let Err(e) = Region::new(layout.readable, 0, hdr_len).read_into(mem, &mut b) {
            return self.log_malformed(format_args!("bad tx buffer: {e}"));
        }
        let h = Header::from_bytes(&b);
        let len = h.len.get();
        if len > MAX_PKT_PAYLOAD || u64::from(len) > layout.readable_len - hdr_len {
            self.log_malformed(format_args!(
                "tx packet claims {len} payload bytes, the chain holds {}",
                layout.readable_len - hdr_len
            ));
            return self.refuse(&h);
        }
        let payload = Region::new(layout.readable, hdr_len, u64::from(len));
        self.handle_packet(mem, &h, payload);
    }

    /// Answers `h` with RST and drops the connection it names, if any.
    fn refuse(&mut self, h: &Header) {
        if h.src_cid.get() != self.guest_cid {
            return;
        }
        let key = (h.dst_port.get(), h.src_port.get());
        match self.by_addr.get(&key) {
            Some(&token) => self.reset(token),
            None => self.reply_rst(h),
        }
    }

    fn handle_packet<M: GuestMemory>(&mut self, mem: &M, h: &Header, payload: Region<'_>) {
        let src_cid = h.src_cid.get();
        if src_cid != self.guest_cid {
            // §5.10.6.4: the driver MUST use guest_cid as source; a
            // spoofed source gets nothing, not even a RST.
            return self.log_malformed(format_args!("tx packet from CID {src_cid} dropped"));
        }
        if h.type_.get() != TYPE_STREAM {
            // §5.10.6.4: RST for an unknown type.
            return self.refuse(h);
        }
        if h.dst_cid.get() != HOST_CID {
            // Only the host is reachable through this device.
            return self.reply_rst(h);
        }
        let key = (h.dst_port.get(), h.src_port.get());
        let op = h.op.get();
        if op == op::REQUEST {
            return self.request(h, key);
        }
        let Some(&token) = self.by_addr.get(&key) else {
            return self.reply_rst(h);
        };
        let Some(c) = self.conns.get_mut(&token) else {
            return self.reply_rst(h);
        };
        c.peer_credit(h.buf_alloc.get(), h.fwd_cnt.get());
        match (op, c.state) {
            (op::RESPONSE, State::Connecting) => {
                c.state = State::Established;
                c.handshake = format!("OK {}\n", c.local_port).into_bytes();
                self.flush(token);
            }
            (op::RST, _) => {
                self.remove(token);
            }
            (op::SHUTDOWN, State::Established) => {
                // Permanent hints (§5.10.6.5): bits are only ever added.
                c.peer_shutdown |= h.flags.get() & (SHUTDOWN_F_RECEIVE | SHUTDOWN_F_SEND);
                self.flush(token);
            }
            (op::RW, State::Established) if c.peer_shutdown & SHUTDOWN_F_SEND == 0 => {
                let len = h.len.get();
                if c.accept_payload(len).is_err() {
                    log::log!(
                        self.refused.level(),
                        "virtio-vsock: guest port {} sent {len} bytes beyond its credit, reset",
                        c.peer_port
                    );
                    return self.reset(token);
                }
                let mut scratch = std::mem::take(&mut self.scratch);
                // `len <= MAX_PKT_PAYLOAD == scratch.len()` (checked above).
                let buf = &mut scratch[..len as usize];
                let r = match payload.read_into(mem, buf) {
                    Ok(()) => c.send_to_host(buf).map_err(Some),
                    Err(e) => {
                        self.malformed.level();
                        log::debug!("virtio-vsock: bad tx payload: {e}");
                        Err(None)
                    }
                };
                self.scratch = scratch;
                if let Err(e) = r {
                    if let Some(e) = e {
                        log::debug!("virtio-vsock: host stream write failed: {e}");
                    }
                    self.reset(token);
                }
            }
            (op::CREDIT_UPDATE, _) => {}
            (op::CREDIT_REQUEST, _) => c.owed.credit_update = true,
            (_, state) => {
                self.log_malformed(format_args!("op {op} in state {state:?}: reset"));
                self.reset(token);
            }
        }
    }

    /// A guest connects to host port `key.0` from its port `key.1`.
    fn request(&mut self, h: &Header, key: (u32, u32)) {
        if let Some(&token) = self.by_addr.get(&key) {
            // The tuple is in use: the guest lost track of it. A RST for
            // the tuple ends both, so both sides agree it is gone.
            return self.reset(token);
        }
        if self.conns.len() + self.pending.len() >= self.opts.max_connections {
            log::log!(
                self.refused.level(),
                "virtio-vsock: connection limit {} reached, RST",
                self.opts.max_connections
            );
            return self.reply_rst(h);
        }
        let stream = match self.listener.connect_port(key.0) {
            Ok(s) => s,
            Err(e) => {
                log::debug!("virtio-vsock: guest connect to port {} refused: {e}", key.0);
                return self.reply_rst(h);
            }
        };
        let mut c = Conn::new(
            stream,
            key.0,
            key.1,
            State::Established,
            self.opts.buf_alloc,
        );
        c.peer_credit(h.buf_alloc.get(), h.fwd_cnt.get());
        c.owed.response = true;
        self.insert(c);
    }

    fn new_token(&mut self) -> u64 {
        let token = self.next_token;
        // 2^64 sockets are never opened; wrapping keeps it total.
        self.next_token = self.next_token.wrapping_add(1).max(LISTENER_TOKEN + 1);
        // The two highest tokens are the timer and the more-work fd.
        if self.next_token >= Alarm::TOKEN {
            self.next_token = LISTENER_TOKEN + 1;
        }
        token
    }

    fn insert(&mut self, c: Conn) {
        let token = self.new_token();
        self.insert_at(token, c);
    }

    fn insert_at(&mut self, token: u64, c: Conn) {
        self.by_addr.insert((c.local_port, c.peer_port), token);
        self.conns.insert(token, c);
    }

    /// Flushes connection `token` toward its host program; resets it when
    /// the host stream failed, answers a finished clean close with RST.
    fn flush(&mut self, token: u64) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        if let Err(e) = c.flush_to_host() {
            log::debug!("virtio-vsock: host stream write failed: {e}");
            return self.reset(token);
        }
        if c.closed_by_peer() {
            self.reset(token);
        }
    }

    fn flush_all(&mut self) {
        let tokens: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.wants_write())
            .map(|(&t, _)| t)
            .collect();
        for t in tokens {
            self.flush(t);
        }
    }

    /// Reads host bytes for every connection that may have some and whose
    /// guest has credit, at most that credit and [`STAGE_SIZE`].
    fn stage_all(&mut self) {
        let mut buf = [0u8; STAGE_SIZE];
        let mut failed = Vec::new();
        for (&token, c) in &mut self.conns {
            if !(c.host_readable && c.staged.is_empty() && c.reads_host()) {
                continue;
            }
            let want = (c.peer_free() as usize).min(STAGE_SIZE);
            if want == 0 {
                continue;
            }
            match c.stream.read(&mut buf[..want]) {
                Ok(0) => {
                    // The host program will send no more.
                    c.host_eof = true;
                    c.host_readable = false;
                    c.owed.shutdown |= SHUTDOWN_F_SEND;
                }
                Ok(n) => c.staged.extend(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.host_readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("virtio-vsock: host stream read failed: {e}");
                    failed.push(token);
                }
            }
        }
        for t in failed {
            self.reset(t);
        }
    }

    fn has_rx(&self) -> bool {
        !self.replies.is_empty() || self.conns.values().any(Conn::has_packet)
    }

    /// Fills one rx chain with the next packet: a reply, else the next
    /// connection's (round robin) REQUEST, RESPONSE, data, SHUTDOWN or
    /// CREDIT_UPDATE. Returns the used length; a malformed chain gets 0
    /// and the packet waits for the next one.
    fn fill_rx<M: GuestMemory>(&mut self, mem: &M, descs: &[Descriptor]) -> u32 {
        let layout = match ChainLayout::split(descs) {
            Ok(l) if l.readable.is_empty() && l.writable_len >= HEADER_SIZE as u64 => l,
            _ => {
                self.log_malformed(format_args!(
                    "rx buffer not device-writable or shorter than a header"
                ));
                return 0;
            }
        };
        let out = Region::new(layout.writable, 0, layout.writable_len);
        if let Some(h) = self.replies.front() {
            return match out
                .sub(0, HEADER_SIZE as u64)
                .write_from(mem, &h.to_bytes())
            {
                Ok(()) => {
                    self.replies.pop_front();
                    HEADER_SIZE as u32
                }
                Err(e) => {
                    self.log_malformed(format_args!("bad rx buffer: {e}"));
                    0
                }
            };
        }
        let next = self
            .conns
            .range(self.cursor.saturating_add(1)..)
            .chain(self.conns.range(..=self.cursor))
            .find(|(_, c)| c.has_packet())
            .map(|(&t, _)| t);
        let Some(token) = next else { return 0 };
        self.cursor = token;
        let room = layout.writable_len - HEADER_SIZE as u64;
        let guest_cid = self.guest_cid;
        let Some(c) = self.conns.get_mut(&token) else {
            return 0;
        };
        let (op, flags, n) = if c.owed.request {
            (op::REQUEST, 0, 0)
        } else if c.owed.response {
            (op::RESPONSE, 0, 0)
        } else if !c.staged.is_empty() && c.peer_free() > 0 && room > 0 {
            // Bounded by the staged bytes (<= STAGE_SIZE), so it fits u32.
            let n = (c.staged.len() as u64)
                .min(u64::from(c.peer_free()))
                .min(room)
                .min(u64::from(MAX_PKT_PAYLOAD)) as usize;
            (op::RW, 0, n)
        } else if c.owed.shutdown != 0 && c.staged.is_empty() {
            (op::SHUTDOWN, c.owed.shutdown, 0)
        } else {
            // Also for data that does not fit a buffer exactly one header
            // long: a packet the guest may receive at any time (§5.10.6.3)
            // rather than a used buffer with no packet in it.
            (op::CREDIT_UPDATE, 0, 0)
        };
        let h = Header {
            src_cid: Le64::new(HOST_CID),
            dst_cid: Le64::new(guest_cid),
            src_port: Le32::new(c.local_port),
            dst_port: Le32::new(c.peer_port),
            // `n <= STAGE_SIZE`.
            len: Le32::new(n as u32),
            type_: Le16::new(TYPE_STREAM),
            op: Le16::new(op),
            flags: Le32::new(flags),
            buf_alloc: Le32::new(c.buf_alloc),
            fwd_cnt: Le32::new(c.fwd_cnt),
        };
        let r = out
            .sub(0, HEADER_SIZE as u64)
            .write_from(mem, &h.to_bytes())
            .and_then(|()| {
                let (front, back) = c.staged.as_slices();
                let first = n.min(front.len());
                out.sub(HEADER_SIZE as u64, first as u64)
                    .write_from(mem, &front[..first])?;
                out.sub((HEADER_SIZE + first) as u64, (n - first) as u64)
                    .write_from(mem, &back[..n - first])
            });
        if let Err(e) = r {
            self.log_malformed(format_args!("bad rx buffer: {e}"));
            return 0;
        }
        c.fwd_cnt_sent = c.fwd_cnt;
        c.owed.credit_update = false;
        match op {
            op::REQUEST => c.owed.request = false,
            op::RESPONSE => c.owed.response = false,
            op::SHUTDOWN => c.owed.shutdown = 0,
            op::RW => {
                c.staged.drain(..n);
                // `n <= STAGE_SIZE`.
                c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
            }
            _ => {}
        }
        // `n <= STAGE_SIZE`, so the sum fits u32.
        (HEADER_SIZE + n) as u32
    }

    /// Fills one event chain with TRANSPORT_RESET.
    fn fill_event<M: GuestMemory>(&mut self, mem: &M, descs: &[Descriptor]) -> u32 {
        let layout = match ChainLayout::split(descs) {
            Ok(l) if l.readable.is_empty() && l.writable_len >= EVENT_SIZE as u64 => l,
            _ => {
                self.log_malformed(format_args!("event buffer shorter than an event"));
                return 0;
            }
        };
        let ev = EVENT_TRANSPORT_RESET.to_le_bytes();
        match Region::new(layout.writable, 0, EVENT_SIZE as u64).write_from(mem, &ev) {
            Ok(()) => {
                self.transport_reset = false;
                EVENT_SIZE as u32
            }
            Err(e) => {
                self.log_malformed(format_args!("bad event buffer: {e}"));
                0
            }
        }
    }

    /// Drops every connection (their host programs see end of file); owes
    /// TRANSPORT_RESET when there were any.
    fn drop_connections(&mut self) {
        if !self.conns.is_empty() {
            self.transport_reset = true;
        }
        self.conns.clear();
        self.by_addr.clear();
        self.replies.clear();
    }

    fn backend_fds(&self) -> Vec<BackendFd> {
        let mut fds = Vec::with_capacity(1 + self.pending.len() + self.conns.len());
        if self.accepting() {
            fds.push(BackendFd {
                fd: self.listener.listener.as_raw_fd(),
                token: LISTENER_TOKEN,
                readable: true,
                writable: false,
            });
        }
        for (&token, p) in &self.pending {
            fds.push(BackendFd {
                fd: p.stream.as_raw_fd(),
                token,
                readable: true,
                writable: false,
            });
        }
        for (&token, c) in &self.conns {
            let (readable, writable) = (c.wants_read(), c.wants_write());
            if readable || writable {
                fds.push(BackendFd {
                    fd: c.stream.as_raw_fd(),
                    token,
                    readable,
                    writable,
                });
            }
        }
        fds
    }

    fn backend_event(&mut self, token: u64) {
        if token == LISTENER_TOKEN {
            self.accept();
        } else if self.pending.contains_key(&token) {
            self.handshake(token);
        } else if let Some(c) = self.conns.get_mut(&token) {
            c.host_readable = true;
            self.flush(token);
        }
    }
}

impl<M: GuestMemory + Send> VirtioDevice<M> for Vsock<M> {
    fn device_type(&self) -> u32 {
        device_id::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn device_features(&self) -> u64 {
        bit(F_STREAM)
            | bit(F_NO_IMPLIED_STREAM)
            | bit(VIRTIO_F_INDIRECT_DESC)
            | bit(VIRTIO_F_EVENT_IDX)
            | bit(VIRTIO_F_RING_RESET)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::block::read_config_bytes(&self.proto.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // `guest_cid` is read-only.
    }

    fn activate(
        &mut self,
        mem: M,
        interrupt: InterruptStatus,
        queues: Vec<Queue>,
        features: u64,
    ) -> Result<(), ActivateError> {
        // NO_IMPLIED_STREAM without STREAM leaves no socket type.
        if features & bit(F_NO_IMPLIED_STREAM) != 0 && features & bit(F_STREAM) == 0 {
            return Err(ActivateError::Features(features));
        }
        self.more.open()?;
        self.alarm.open()?;
        let mut it = queues.into_iter().map(|q| q.ready().then_some(q));
        let queues = [
            it.next().flatten(),
            it.next().flatten(),
            it.next().flatten(),
        ];
        self.active = Some(Active {
            mem,
            interrupt,
            queues,
            broken: [false; 3],
        });
        self.pump(false);
        Ok(())
    }

    fn queue_notify(&mut self, _index: u16, _data: Option<NotificationData>) {
        self.pump(false);
    }

    fn reset(&mut self) {
        self.active = None;
        self.more.clear();
        self.proto.drop_connections();
        // Host programs in their line stay; their deadlines need no
        // timer until the next activate.
        self.alarm.set(None, false);
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
        self.pump(false);
    }

    fn backend_fds(&self) -> Vec<BackendFd> {
        if self.active.is_none() {
            return Vec::new();
        }
        let mut fds = self.proto.backend_fds();
        fds.extend(self.more.backend_fd());
        fds.extend(self.alarm.backend_fd());
        fds
    }

    fn backend_event(&mut self, token: u64) {
        if self.active.is_none() {
            return;
        }
        if token == MoreWork::TOKEN {
            self.more.clear();
        } else if token != Alarm::TOKEN {
            self.proto.backend_event(token);
        }
        self.pump(token == Alarm::TOKEN);
    }
}

#[cfg(test)]
mod tests;
