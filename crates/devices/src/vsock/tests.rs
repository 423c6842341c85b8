//! Socket device tests: a hand-written guest on three test rings, host
//! programs on real Unix sockets in a temporary directory.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};
use vmmio_device::VirtioDevice;
use vmmio_spec::vsock::{op, SHUTDOWN_F_RECEIVE, SHUTDOWN_F_SEND, TYPE_SEQPACKET};

use super::*;
use crate::test_util::{desc, interrupt, mem, CountingLine, Mem, TestRing};

const CID: u64 = 3;
/// rx buffer size used by the fake guest (header + 512 payload bytes).
const RX_BUF: u32 = HEADER_SIZE as u32 + 512;

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("vmmio-vsock-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A received packet.
#[derive(Debug)]
struct Pkt {
    h: Header,
    data: Vec<u8>,
}

impl Pkt {
    fn op(&self) -> u16 {
        self.h.op.get()
    }
}

struct Fx {
    m: Mem,
    rx: TestRing,
    tx: TestRing,
    ev: TestRing,
    dev: Vsock<Mem>,
    _line: Arc<CountingLine>,
    /// rx buffer address by head.
    rx_bufs: HashMap<u32, u64>,
    ev_bufs: HashMap<u32, u64>,
    path: PathBuf,
    _dir: TempDir,
}

fn fx_with(opts: VsockOptions) -> Fx {
    let dir = TempDir::new();
    let path = dir.0.join("v.sock");
    let mut dev = Vsock::with_options(CID, &path, opts).unwrap();
    let m = mem();
    let rx = TestRing::new(64, 0);
    let tx = TestRing::new(64, 1);
    let ev = TestRing::new(4, 2);
    let (irq, line) = interrupt();
    dev.activate(
        m.clone(),
        irq,
        vec![rx.queue(0), tx.queue(0), ev.queue(0)],
        bit(F_STREAM),
    )
    .unwrap();
    Fx {
        m,
        rx,
        tx,
        ev,
        dev,
        _line: line,
        rx_bufs: HashMap::new(),
        ev_bufs: HashMap::new(),
        path,
        _dir: dir,
    }
}

fn fx() -> Fx {
    fx_with(VsockOptions::default())
}

fn hdr(src_port: u32, dst_port: u32, op: u16) -> Header {
    Header {
        src_cid: Le64::new(CID),
        dst_cid: Le64::new(HOST_CID),
        src_port: Le32::new(src_port),
        dst_port: Le32::new(dst_port),
        type_: Le16::new(TYPE_STREAM),
        op: Le16::new(op),
        buf_alloc: Le32::new(1 << 20),
        ..Header::default()
    }
}

impl Fx {
    /// Posts `n` rx buffers (reusing addresses is fine: each is read once
    /// when it comes back).
    fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let a = self.rx.alloc(u64::from(RX_BUF));
            let head = self.rx.add_chain(&self.m, &[desc(a, RX_BUF, true)]);
            self.rx_bufs.insert(u32::from(head), a);
        }
        self.dev.queue_notify(RXQ, None);
    }

    fn post_event(&mut self) {
        let a = self.ev.alloc(4);
        let head = self.ev.add_chain(&self.m, &[desc(a, 4, true)]);
        self.ev_bufs.insert(u32::from(head), a);
        self.dev.queue_notify(EVENTQ, None);
    }

    /// Sends one guest packet with `data` as payload (`len` from `data`).
    fn send(&mut self, mut h: Header, data: &[u8]) {
        h.len = Le32::new(data.len() as u32);
        self.send_raw(&h, data);
    }

    fn send_raw(&mut self, h: &Header, data: &[u8]) {
        let a = self.tx.alloc((HEADER_SIZE + data.len()) as u64);
        self.m.write_slice(&h.to_bytes(), GuestAddress(a)).unwrap();
        self.m
            .write_slice(data, GuestAddress(a + HEADER_SIZE as u64))
            .unwrap();
        let len = (HEADER_SIZE + data.len()) as u32;
        self.tx.add_chain(&self.m, &[desc(a, len, false)]);
        self.dev.queue_notify(TXQ, None);
    }

    /// Packets the device put in the rx ring since the last call.
    fn recv(&mut self) -> Vec<Pkt> {
        self.rx
            .take_used(&self.m)
            .into_iter()
            .map(|(id, len)| {
                let a = self.rx_bufs.remove(&id).expect("a posted buffer");
                assert!(
                    len as usize >= HEADER_SIZE && len <= RX_BUF,
                    "used len {len}"
                );
                let mut b = [0u8; HEADER_SIZE];
                self.m.read_slice(&mut b, GuestAddress(a)).unwrap();
                let h = Header::from_bytes(&b);
                assert_eq!(h.len.get() as usize + HEADER_SIZE, len as usize);
                let mut data = vec![0u8; h.len.get() as usize];
                self.m
                    .read_slice(&mut data, GuestAddress(a + HEADER_SIZE as u64))
                    .unwrap();
                Pkt { h, data }
            })
            .collect()
    }

    /// Calls `backend_event` for every listed fd, as a poll loop that found
    /// them all ready would (spurious calls must be harmless).
    fn poke(&mut self) {
        for b in self.dev.backend_fds() {
            self.dev.backend_event(b.token);
        }
    }

    /// A host program listening on `PATH_port`.
    fn host_listen(&self, port: u32) -> UnixListener {
        UnixListener::bind(format!("{}_{port}", self.path.display())).unwrap()
    }

    /// Guest connects from `src` to host `port`; returns the host end.
    fn guest_connect(&mut self, l: &UnixListener, src: u32, port: u32) -> UnixStream {
        self.send(hdr(src, port, op::REQUEST), &[]);
        let p = self.recv();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].op(), op::RESPONSE);
        assert_eq!(p[0].h.dst_port.get(), src);
        assert_eq!(p[0].h.src_port.get(), port);
        assert_eq!(p[0].h.buf_alloc.get(), BUF_ALLOC);
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        s
    }
}

#[test]
fn config_is_the_guest_cid_and_reserved_cids_are_refused() {
    let f = fx();
    let mut b = [0xffu8; 12];
    f.dev.read_config(0, &mut b);
    assert_eq!(b, [3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut hi = [0xffu8; 4];
    f.dev.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
    let dir = TempDir::new();
    for cid in [0, 1, 2, 0xffff_ffff, u64::MAX, 1 << 32] {
        let r = Vsock::<Mem>::new(cid, dir.0.join("x"));
        assert!(matches!(r, Err(VsockError::ReservedCid(c)) if c == cid));
    }
    assert_eq!(f.dev.device_type(), device_id::VSOCK);
    assert_eq!(f.dev.queue_max_sizes().len(), 3);
}

#[test]
fn guest_connects_to_host_port_exchanges_data_and_closes_cleanly() {
    let mut f = fx();
    f.post_rx(16);
    let l = f.host_listen(1234);
    let mut s = f.guest_connect(&l, 4000, 1234);
    f.send(hdr(4000, 1234, op::RW), b"ping");
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    s.write_all(b"pong!").unwrap();
    f.poke();
    let p = f.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].op(), op::RW);
    assert_eq!(p[0].data, b"pong!");
    // Guest closes: SHUTDOWN with both flags; the device answers RST and
    // the host program reads end of file.
    let mut h = hdr(4000, 1234, op::SHUTDOWN);
    h.flags = Le32::new(SHUTDOWN_F_RECEIVE | SHUTDOWN_F_SEND);
    f.send(h, &[]);
    let p = f.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].op(), op::RST);
    assert_eq!(s.read(&mut b).unwrap(), 0);
    assert_eq!(f.dev.connections(), 0);
}

#[test]
fn host_eof_becomes_shutdown_send_after_the_data() {
    let mut f = fx();
    f.post_rx(16);
    let l = f.host_listen(1);
    let s = f.guest_connect(&l, 9, 1);
    (&s).write_all(b"last words").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    f.poke();
    f.poke();
    let p = f.recv();
    let ops: Vec<u16> = p.iter().map(Pkt::op).collect();
    assert_eq!(ops, [op::RW, op::SHUTDOWN]);
    assert_eq!(p[0].data, b"last words");
    assert_eq!(p[1].h.flags.get(), SHUTDOWN_F_SEND);
}

#[test]
fn request_to_a_port_nobody_listens_on_is_reset() {
    let mut f = fx();
    f.post_rx(4);
    f.send(hdr(5, 77, op::REQUEST), &[]);
    let p = f.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].op(), op::RST);
    assert_eq!((p[0].h.src_port.get(), p[0].h.dst_port.get()), (77, 5));
    assert_eq!(p[0].h.dst_cid.get(), CID);
    assert_eq!(f.dev.connections(), 0);
}

/// §5.10.6.3 (device): RW only within the peer's free space. The guest
/// grants 100 bytes; the host has 1000 ready; exactly 100 arrive, the rest
/// after the guest's CREDIT_UPDATE.
#[test]
fn device_never_sends_beyond_the_guest_credit() {
    let mut f = fx();
    f.post_rx(32);
    let l = f.host_listen(2);
    let mut h = hdr(10, 2, op::REQUEST);
    h.buf_alloc = Le32::new(100);
    f.send(h, &[]);
    assert_eq!(f.recv()[0].op(), op::RESPONSE);
    let (mut s, _) = l.accept().unwrap();
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    s.write_all(&data).unwrap();
    for _ in 0..4 {
        f.poke();
    }
    let got: Vec<u8> = f.recv().into_iter().flat_map(|p| p.data).collect();
    assert_eq!(got, data[..100]);
    // Nothing more until the guest frees space, whatever is polled.
    f.poke();
    assert!(f.recv().is_empty());
    assert!(
        f.dev
            .backend_fds()
            .iter()
            .all(|b| !b.readable || b.token == LISTENER_TOKEN),
        "no read interest without credit"
    );
    let mut up = hdr(10, 2, op::CREDIT_UPDATE);
    up.buf_alloc = Le32::new(100);
    up.fwd_cnt = Le32::new(100);
    f.send(up, &[]);
    for _ in 0..4 {
        f.poke();
    }
    let got: Vec<u8> = f.recv().into_iter().flat_map(|p| p.data).collect();
    assert_eq!(got, data[100..200]);
}

/// A guest that sends more than the credit it was given is reset, not
/// buffered.
#[test]
fn guest_exceeding_its_credit_is_reset() {
    let mut f = fx_with(VsockOptions {
        buf_alloc: 64,
        ..VsockOptions::default()
    });
    f.post_rx(8);
    let l = f.host_listen(3);
    f.send(hdr(11, 3, op::REQUEST), &[]);
    assert_eq!(f.recv()[0].h.buf_alloc.get(), 64);
    let (mut s, _) = l.accept().unwrap();
    f.send(hdr(11, 3, op::RW), &[1; 64]);
    // All 64 reached the host: the guest hears its credit is back.
    let p = f.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].op(), op::CREDIT_UPDATE);
    assert_eq!(p[0].h.fwd_cnt.get(), 64);
    // One packet beyond what 64 bytes of credit allow.
    f.send(hdr(11, 3, op::RW), &[2; 65]);
    let p = f.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].op(), op::RST);
    // §5.10.6.3.2: every packet of the flow, its RST included, carries
    // the device's credit.
    assert_eq!(
        (p[0].h.buf_alloc.get(), p[0].h.fwd_cnt.get()),
        (64, 64),
        "RST without credit fields"
    );
    assert_eq!(f.dev.connections(), 0);
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, [1; 64]);
}

#[test]
fn credit_request_is_answered_with_credit_update() {
    let mut f = fx();
    f.post_rx(8);
    let l = f.host_listen(4);
    let _s = f.guest_connect(&l, 12, 4);
    f.send(hdr(12, 4, op::CREDIT_REQUEST), &[]);
    let p = f.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].op(), op::CREDIT_UPDATE);
    assert_eq!(p[0].h.buf_alloc.get(), BUF_ALLOC);
    assert_eq!(p[0].h.fwd_cnt.get(), 0);
}

#[test]
fn host_program_connects_with_connect_line_and_reads_ok() {
    let mut f = fx();
    f.post_rx(8);
    let mut s = UnixStream::connect(&f.path).unwrap();
    s.write_all(b"CONNECT 5000\n").unwrap();
    f.poke(); // accept
    f.poke(); // read the line
    let p = f.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].op(), op::REQUEST);
    assert_eq!(p[0].h.dst_port.get(), 5000);
    let host_port = p[0].h.src_port.get();
    assert_eq!(host_port, FIRST_LOCAL_PORT);
    let mut r = hdr(5000, host_port, op::RESPONSE);
    r.buf_alloc = Le32::new(4096);
    f.send(r, &[]);
    let mut line = [0u8; 14];
    s.read_exact(&mut line).unwrap();
    assert_eq!(&line, format!("OK {host_port}\n").as_bytes());
    f.send(hdr(5000, host_port, op::RW), b"from guest");
    let mut b = [0u8; 10];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"from guest");
    s.write_all(b"from host").unwrap();
    f.poke();
    let p = f.recv();
    assert_eq!(p[0].data, b"from host");
}

#[test]
fn bad_connect_lines_and_guest_rst_close_the_host_program() {
    let mut f = fx();
    f.post_rx(8);
    let mut bad = UnixStream::connect(&f.path).unwrap();
    bad.write_all(b"CONNECT x\n").unwrap();
    let mut s = UnixStream::connect(&f.path).unwrap();
    s.write_all(b"CONNECT 6\n").unwrap();
    f.poke();
    f.poke();
    let mut b = [0u8; 1];
    assert_eq!(bad.read(&mut b).unwrap(), 0);
    let p = f.recv();
    assert_eq!(p[0].op(), op::REQUEST);
    // The guest refuses.
    f.send(hdr(6, p[0].h.src_port.get(), op::RST), &[]);
    assert!(f.recv().is_empty(), "no RST answers a RST");
    assert_eq!(s.read(&mut b).unwrap(), 0);
}

/// A guest opening connections in a loop meets the documented limit: RST
/// beyond it, and host programs beyond it are disconnected.
#[test]
fn connections_beyond_the_limit_are_reset() {
    let mut f = fx_with(VsockOptions {
        max_connections: 3,
        ..VsockOptions::default()
    });
    f.post_rx(16);
    let l = f.host_listen(7);
    for port in 0..3 {
        f.send(hdr(100 + port, 7, op::REQUEST), &[]);
    }
    f.send(hdr(200, 7, op::REQUEST), &[]);
    let ops: Vec<u16> = f.recv().iter().map(Pkt::op).collect();
    assert_eq!(ops, [op::RESPONSE, op::RESPONSE, op::RESPONSE, op::RST]);
    assert_eq!(f.dev.connections(), 3);
    let mut extra = UnixStream::connect(&f.path).unwrap();
    f.poke();
    let mut b = [0u8; 1];
    assert_eq!(extra.read(&mut b).unwrap(), 0);
    drop(l);
}

/// §5.10.6.4 (device): RST for an unknown type. Also: a spoofed source
/// CID gets nothing, a foreign destination CID and an unknown op get RST,
/// a `len` beyond the chain resets the flow.
#[test]
fn guest_controlled_fields_are_checked() {
    let mut f = fx();
    f.post_rx(16);
    let mut h = hdr(1, 2, op::REQUEST);
    h.type_ = Le16::new(TYPE_SEQPACKET);
    f.send(h, &[]);
    let p = f.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].op(), op::RST);
    assert_eq!(p[0].h.type_.get(), TYPE_SEQPACKET);

    let mut h = hdr(1, 2, op::REQUEST);
    h.src_cid = Le64::new(9);
    f.send(h, &[]);
    assert!(f.recv().is_empty());

    let mut h = hdr(1, 2, op::REQUEST);
    h.dst_cid = Le64::new(4);
    f.send(h, &[]);
    assert_eq!(f.recv()[0].op(), op::RST);

    let l = f.host_listen(8);
    let _s = f.guest_connect(&l, 20, 8);
    f.send(hdr(20, 8, 99), &[]);
    assert_eq!(f.recv()[0].op(), op::RST);
    assert_eq!(f.dev.connections(), 0);

    let _s = f.guest_connect(&l, 21, 8);
    let mut h = hdr(21, 8, op::RW);
    h.len = Le32::new(1000);
    f.send_raw(&h, &[0; 10]);
    assert_eq!(f.recv()[0].op(), op::RST);
    assert_eq!(f.dev.connections(), 0);

    // A chain shorter than a header is dropped; the device keeps going.
    let a = f.tx.alloc(8);
    f.tx.add_chain(&f.m, &[desc(a, 8, false)]);
    f.dev.queue_notify(TXQ, None);
    assert!(f.recv().is_empty());
    let used = f.tx.take_used(&f.m);
    assert_eq!(used.len(), 8);
    assert!(used.iter().all(|&(_, len)| len == 0));
}

/// §5.10.6.1: the tx queue is processed while rx is full, until the
/// bounded reply queue is full; then the device waits for rx buffers.
#[test]
fn replies_without_rx_buffers_are_bounded() {
    let mut f = fx_with(VsockOptions {
        max_replies: 5,
        ..VsockOptions::default()
    });
    for i in 0..8 {
        f.send(hdr(i, 999, op::REQUEST), &[]);
    }
    assert_eq!(f.tx.take_used(&f.m).len(), 5);
    f.post_rx(16);
    assert_eq!(f.recv().len(), 8);
    assert_eq!(f.tx.take_used(&f.m).len(), 3);
}

/// §5.10.6.6: a reset with connections open drops them (host programs
/// read end of file) and the next driver gets TRANSPORT_RESET.
#[test]
fn reset_with_connections_sends_transport_reset() {
    let mut f = fx();
    f.post_rx(8);
    let l = f.host_listen(9);
    let mut s = f.guest_connect(&l, 30, 9);
    VirtioDevice::<Mem>::reset(&mut f.dev);
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap(), 0);
    let (irq, _line) = interrupt();
    f.ev = TestRing::new(4, 2);
    f.dev
        .activate(
            f.m.clone(),
            irq,
            vec![Queue::new(64), Queue::new(64), f.ev.queue(0)],
            bit(F_STREAM),
        )
        .unwrap();
    f.post_event();
    let used = f.ev.take_used(&f.m);
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].1, 4);
    let a = f.ev_bufs[&used[0].0];
    assert_eq!(f.m.read_obj::<u32>(GuestAddress(a)).unwrap(), 0);
    // Only once.
    f.post_event();
    assert!(f.ev.take_used(&f.m).is_empty());
}

#[test]
fn offers_stream_and_no_implied_stream_and_needs_stream() {
    let dir = TempDir::new();
    let mut dev = Vsock::<Mem>::new(CID, dir.0.join("s")).unwrap();
    let (irq, _line) = interrupt();
    let r = dev.activate(mem(), irq, vec![], bit(F_NO_IMPLIED_STREAM));
    assert!(r.is_err());
    // §5.10.3.2: the device SHOULD offer NO_IMPLIED_STREAM (with STREAM).
    let f = VirtioDevice::<Mem>::device_features(&dev);
    assert_ne!(f & bit(F_NO_IMPLIED_STREAM), 0);
    assert_ne!(f & bit(F_STREAM), 0);
    assert_eq!(f & bit(F_SEQPACKET), 0);
}

mod hostile {
    //! Property test: arbitrary guest packets (any op, type, ports, CIDs,
    //! lengths, credit numbers) against the device with host programs that
    //! always have data to send. Nothing panics, and the device never has
    //! more payload in flight on a connection than the guest's last
    //! advertised `buf_alloc` (§5.10.6.3, device side).

    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    struct P {
        op: u16,
        type_: u16,
        src_port: u32,
        dst_port: u32,
        wrong_cid: u8,
        len: usize,
        buf_alloc: u32,
        fwd_cnt: u32,
        flags: u32,
        rx: u8,
    }

    fn packet() -> impl Strategy<Value = P> {
        (
            0u16..9,
            prop_oneof![4 => Just(TYPE_STREAM), 1 => 0u16..4],
            0u32..3,
            0u32..3,
            0u8..8,
            0usize..300,
            prop_oneof![Just(0u32), 0u32..2000, any::<u32>()],
            prop_oneof![Just(0u32), 0u32..2000, any::<u32>()],
            0u32..4,
            0u8..4,
        )
            .prop_map(
                |(op, type_, src_port, dst_port, wrong_cid, len, buf_alloc, fwd_cnt, flags, rx)| {
                    P {
                        op,
                        type_,
                        src_port,
                        dst_port,
                        wrong_cid,
                        len,
                        buf_alloc,
                        fwd_cnt,
                        flags,
                        rx,
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn device_stays_within_the_guest_credit(ps in proptest::collection::vec(packet(), 1..40)) {
            let mut f = fx_with(VsockOptions { buf_alloc: 256, max_connections: 4, ..VsockOptions::default() });
            let ls: Vec<UnixListener> = (0..2).map(|p| f.host_listen(p)).collect();
            for l in &ls {
                l.set_nonblocking(true).unwrap();
            }
            let mut hosts = Vec::new();
            // (host port, guest port) -> the guest's last buf_alloc, fwd_cnt
            let mut advertised: HashMap<(u32, u32), (u32, u32)> = HashMap::new();
            // Connections the device accepted (its RESPONSE seen), same key
            // -> (guest's buf_alloc, fwd_cnt, payload received). A
            // RESPONSE starts the count: a RST the device owed for an
            // earlier packet on the tuple may reach the guest after the
            // guest's next REQUEST, so the RST cannot end the model's view
            // of the connection by itself.
            let mut credit: HashMap<(u32, u32), (u32, u32, u32)> = HashMap::new();
            for p in ps {
                let mut h = hdr(p.src_port, p.dst_port, p.op);
                h.type_ = Le16::new(p.type_);
                h.buf_alloc = Le32::new(p.buf_alloc);
                h.fwd_cnt = Le32::new(p.fwd_cnt);
                h.flags = Le32::new(p.flags);
                match p.wrong_cid {
                    0 => h.src_cid = Le64::new(7),
                    1 => h.dst_cid = Le64::new(CID),
                    _ => {}
                }
                let data = vec![0x5a; p.len];
                if p.wrong_cid == 2 {
                    // `len` beyond the chain.
                    h.len = Le32::new(p.len as u32 + 1);
                    f.send_raw(&h, &data);
                } else {
                    f.send(h, &data);
                }
                if p.wrong_cid > 1 && p.type_ == TYPE_STREAM {
                    let key = (p.dst_port, p.src_port);
                    advertised.insert(key, (p.buf_alloc, p.fwd_cnt));
                    if let Some(c) = credit.get_mut(&key) {
                        c.0 = p.buf_alloc;
                        c.1 = p.fwd_cnt;
                    }
                }
                for l in &ls {
                    while let Ok((s, _)) = l.accept() {
                        s.set_nonblocking(true).unwrap();
                        hosts.push(s);
                    }
                }
                for s in &mut hosts {
                    let _ = s.write(&[0xa5; 700]);
                    let mut sink = [0u8; 4096];
                    let _ = s.read(&mut sink);
                }
                f.poke();
                f.post_rx(usize::from(p.rx));
                for pkt in f.recv() {
                    let key = (pkt.h.src_port.get(), pkt.h.dst_port.get());
                    match pkt.op() {
                        // A RST from another CID answers a packet sent there.
                        op::RST if pkt.h.src_cid.get() == HOST_CID => {
                            credit.remove(&key);
                        }
                        op::RESPONSE => {
                            let (b, f) = advertised.get(&key).copied().unwrap_or_default();
                            credit.insert(key, (b, f, 0));
                        }
                        op::RW => {
                            let c = credit.get_mut(&key).expect("RW on a connection the device accepted");
                            c.2 = c.2.wrapping_add(pkt.data.len() as u32);
                            let in_flight = c.2.wrapping_sub(c.1);
                            prop_assert!(in_flight <= c.0, "in flight {in_flight} > buf_alloc {}", c.0);
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// A host program that never finishes its line, and a host-initiated
/// connection the guest never answers, are dropped after the connect
/// timeout (the guest gets RST for the latter): they cannot hold
/// connection slots forever.
#[test]
fn stale_handshakes_expire() {
    let mut f = fx_with(VsockOptions {
        connect_timeout: std::time::Duration::from_millis(10),
        ..VsockOptions::default()
    });
    f.post_rx(8);
    let mut silent = UnixStream::connect(&f.path).unwrap();
    let mut s = UnixStream::connect(&f.path).unwrap();
    for c in [&silent, &s] {
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
    }
    s.write_all(b"CONNECT 5000\n").unwrap();
    f.poke();
    f.poke();
    let p = f.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].op(), op::REQUEST);
    std::thread::sleep(std::time::Duration::from_millis(50));
    f.poke();
    let p = f.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].op(), op::RST);
    assert_eq!(p[0].h.dst_port.get(), 5000);
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap(), 0);
    assert_eq!(silent.read(&mut b).unwrap(), 0);
    assert_eq!(f.dev.connections(), 0);
}

/// An rx buffer exactly one header long while host data waits: the spec
/// lets the device send CREDIT_UPDATE at any time (§5.10.6.3), so the
/// buffer carries one (a whole packet, `len` 0) instead of coming back
/// used with no packet in it; the data goes to the next buffer with room.
#[test]
fn header_only_rx_buffer_gets_a_credit_update_while_data_waits() {
    let mut f = fx();
    f.post_rx(1);
    let l = f.host_listen(1234);
    let mut s = f.guest_connect(&l, 4000, 1234);
    s.write_all(b"waiting").unwrap();
    f.poke();
    assert!(f.recv().is_empty(), "no rx buffer yet");
    for _ in 0..3 {
        let a = f.rx.alloc(HEADER_SIZE as u64);
        let head = f.rx.add_chain(&f.m, &[desc(a, HEADER_SIZE as u32, true)]);
        f.rx_bufs.insert(u32::from(head), a);
    }
    f.dev.queue_notify(RXQ, None);
    // `recv` asserts every used buffer holds a whole packet.
    let p = f.recv();
    let ops: Vec<u16> = p.iter().map(Pkt::op).collect();
    assert_eq!(ops, [op::CREDIT_UPDATE; 3]);
    assert_eq!(p[0].h.buf_alloc.get(), BUF_ALLOC);
    f.post_rx(1);
    let p = f.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].op(), op::RW);
    assert_eq!(p[0].data, b"waiting");
}

/// A stalled handshake ends on time with no other device event: the
/// device's timer fd is what a poll loop wakes for. Both kinds: a host
/// program that never sends its `CONNECT` line, and a host-initiated
/// connection the guest never answers (it gets RST).
#[test]
fn stalled_handshakes_end_without_any_other_event() {
    let mut f = fx_with(VsockOptions {
        connect_timeout: std::time::Duration::from_millis(50),
        ..VsockOptions::default()
    });
    f.post_rx(8);
    let mut silent = UnixStream::connect(&f.path).unwrap();
    let mut s = UnixStream::connect(&f.path).unwrap();
    s.write_all(b"CONNECT 5000\n").unwrap();
    for c in [&silent, &s] {
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
    }
    // Accept both, read the line: the guest gets the REQUEST.
    crate::test_util::run_backends(&mut f.dev, 4);
    let p = f.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].op(), op::REQUEST);
    // From here nothing happens but time: a poll loop (as
    // `MmioTransport::poll_backends`) that waits for the device's fds.
    let mut rounds = 0;
    // Done when only the listener is left to wait for (no handshake, no
    // timer).
    while f.dev.backend_fds().len() > 1 {
        rounds += 1;
        assert!(rounds < 10, "the handshakes were not ended");
        assert!(
            crate::test_util::wait_backends(&mut f.dev, 5_000) > 0,
            "no device fd became ready within 5 s: nothing ends the handshakes"
        );
    }
    let p = f.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].op(), op::RST);
    assert_eq!(p[0].h.dst_port.get(), 5000);
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap(), 0);
    assert_eq!(silent.read(&mut b).unwrap(), 0);
    assert_eq!(f.dev.connections(), 0);
}

/// The device reads at most two stages (2 x `STAGE_SIZE`) of a host stream
/// per run; a stream with more keeps its fd listed, so the rest flows on
/// the next wakeup without a guest notification (Linux refills its rx
/// buffers only below half of them, so it may not notify for long).
#[test]
fn host_data_beyond_one_run_flows_without_a_guest_notification() {
    let mut f = fx();
    f.post_rx(1);
    let l = f.host_listen(1234);
    let mut s = f.guest_connect(&l, 4000, 1234);
    for _ in 0..32 {
        let a = f.rx.alloc(4096);
        f.rx.add_chain(&f.m, &[desc(a, 4096, true)]);
    }
    f.dev.queue_notify(RXQ, None);
    let data = vec![7u8; 4 * STAGE_SIZE];
    s.write_all(&data).unwrap();
    crate::test_util::run_backends(&mut f.dev, 64);
    let got: u64 =
        f.rx.take_used(&f.m)
            .iter()
            .map(|&(_, len)| u64::from(len) - HEADER_SIZE as u64)
            .sum();
    assert_eq!(got, data.len() as u64, "payload delivered");
}
