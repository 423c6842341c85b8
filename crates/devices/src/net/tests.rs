//! Network device tests: configuration, transmit (hostile chains
//! included), receive with and without MRG_RXBUF, checksums, backlog.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};
use vmmio_device::VirtioDevice;
use vmmio_spec::features::{bit, VIRTIO_F_VERSION_1};
use vmmio_spec::net::{
    HDR_F_DATA_VALID, HDR_F_NEEDS_CSUM, HDR_GSO_TCPV4, HDR_SIZE, LEGACY_HDR_SIZE,
};

use super::*;
use crate::test_util::{
    avail_event, desc, interrupt, mem, refiller, run_backends, CountingLine, Mem, TestRing, F_NEXT,
};

/// What the fake backend saw and will give.
#[derive(Default)]
struct Wire {
    sent: Vec<(NetHdr, Vec<u8>)>,
    incoming: VecDeque<(NetHdr, Vec<u8>)>,
    busy: bool,
    /// Called after each frame sent: a driver adding chains meanwhile
    /// (as a vCPU does while a worker thread serves the queue).
    on_send: Option<Box<dyn FnMut() + Send>>,
    /// As a TAP: refuses frames (`busy`) without holding output of its own,
    /// so `wants_write` stays false.
    no_output_buffer: bool,
}

/// A backend over [`Wire`]; its fd (one end of a socket pair) is only
/// there to be listed.
struct Fake {
    wire: Arc<Mutex<Wire>>,
    takes_hdr: bool,
    guest_csum: Arc<Mutex<Option<bool>>>,
    sock: UnixStream,
}

impl Backend for Fake {
    fn fd(&self) -> Option<RawFd> {
        Some(self.sock.as_raw_fd())
    }
    fn takes_hdr(&self) -> bool {
        self.takes_hdr
    }
    fn set_guest_csum(&mut self, enabled: bool) {
        *self.guest_csum.lock().unwrap() = Some(enabled);
    }
    fn send(&mut self, hdr: &NetHdr, frame: &[u8]) -> io::Result<Sent> {
        let mut w = self.wire.lock().unwrap();
        if w.busy {
            return Ok(Sent::Busy);
        }
        w.sent.push((*hdr, frame.to_vec()));
        if let Some(hook) = w.on_send.as_mut() {
            hook();
        }
        Ok(Sent::Done)
    }
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(NetHdr, usize)>> {
        let mut w = self.wire.lock().unwrap();
        Ok(w.incoming.pop_front().map(|(h, f)| {
            buf[..f.len()].copy_from_slice(&f);
            (h, f.len())
        }))
    }
    fn wants_write(&self) -> bool {
        let w = self.wire.lock().unwrap();
        w.busy && !w.no_output_buffer
    }
}

struct Fx {
    m: Mem,
    rx: TestRing,
    tx: TestRing,
    dev: Net<Mem>,
    line: Arc<CountingLine>,
    irq: InterruptStatus,
    wire: Arc<Mutex<Wire>>,
    guest_csum: Arc<Mutex<Option<bool>>>,
    _peer: UnixStream,
}

const MODERN: u64 = bit(VIRTIO_F_VERSION_1);

/// A device over a [`Fake`], its wire, what `set_guest_csum` was told,
/// and the peer end of the fd's socket pair.
type Faked = (
    Net<Mem>,
    Arc<Mutex<Wire>>,
    Arc<Mutex<Option<bool>>>,
    UnixStream,
);

fn fake(takes_hdr: bool) -> Faked {
    let wire = Arc::new(Mutex::new(Wire::default()));
    let gc = Arc::new(Mutex::new(None));
    let (sock, peer) = UnixStream::pair().unwrap();
    let dev = Net::new(Box::new(Fake {
        wire: wire.clone(),
        takes_hdr,
        guest_csum: gc.clone(),
        sock,
    }));
    (dev, wire, gc, peer)
}

fn setup(takes_hdr: bool, features: u64) -> Fx {
    let (mut dev, wire, guest_csum, peer) = fake(takes_hdr);
    let m = mem();
    let rx = TestRing::new(16, 0);
    let tx = TestRing::new(16, 1);
    let (irq, line) = interrupt();
    dev.activate(
        m.clone(),
        irq.clone(),
        vec![rx.queue(features), tx.queue(features)],
        features,
    )
    .unwrap();
    Fx {
        m,
        rx,
        tx,
        dev,
        line,
        irq,
        wire,
        guest_csum,
        _peer: peer,
    }
}

impl Fx {
    /// Puts `hdr` + `frame` in one transmit chain of two descriptors.
    fn send(&mut self, hdr: &[u8], frame: &[u8]) {
        let h = self.tx.alloc(hdr.len() as u64);
        self.m.write_slice(hdr, GuestAddress(h)).unwrap();
        let f = self.tx.alloc(frame.len().max(1) as u64);
        self.m.write_slice(frame, GuestAddress(f)).unwrap();
        self.tx.add_chain(
            &self.m,
            &[
                desc(h, hdr.len() as u32, false),
                desc(f, frame.len() as u32, false),
            ],
        );
    }

    fn sent(&self) -> Vec<(NetHdr, Vec<u8>)> {
        std::mem::take(&mut self.wire.lock().unwrap().sent)
    }

    fn incoming(&self, hdr: NetHdr, frame: &[u8]) {
        self.wire
            .lock()
            .unwrap()
            .incoming
            .push_back((hdr, frame.to_vec()));
    }

    /// Posts a receive buffer of `len` bytes; returns its address.
    fn post(&mut self, len: u32) -> u64 {
        let a = self.rx.alloc(u64::from(len));
        self.rx.add_chain(&self.m, &[desc(a, len, true)]);
        a
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.m.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn stats(&self) -> NetStats {
        self.dev.handle().stats()
    }
}

fn frame(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 1) as u8).collect()
}

fn hdr12() -> [u8; HDR_SIZE] {
    NetHdr::default().to_bytes()
}

#[test]
fn config_reports_mac_link_and_mtu_and_link_changes_notify() {
    let (dev, _w, _g, _p) = fake(false);
    let dev = dev.with_mac([0x52, 0x54, 0, 1, 2, 3]).with_mtu(9000);
    let mut c = [0u8; 12];
    VirtioDevice::<Mem>::read_config(&dev, 0, &mut c);
    assert_eq!(&c[..6], &[0x52, 0x54, 0, 1, 2, 3]);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), S_LINK_UP);
    assert_eq!(u16::from_le_bytes([c[10], c[11]]), 9000);
    // Past the end reads 0; writes are ignored.
    let mut past = [0xffu8; 4];
    VirtioDevice::<Mem>::read_config(&dev, 12, &mut past);
    assert_eq!(past, [0; 4]);
    let f = VirtioDevice::<Mem>::device_features(&dev);
    for b in [F_MAC, F_STATUS, F_MTU, F_MRG_RXBUF, F_CSUM, F_GUEST_CSUM] {
        assert_ne!(f & bit(b), 0, "bit {b}");
    }
    assert_eq!(f & bit(vmmio_spec::net::F_CTRL_VQ), 0);
    // MTU is clamped to what the spec and the frame bound allow.
    assert_eq!(fake(false).0.with_mtu(10).mtu(), 68);
    assert_eq!(fake(false).0.with_mtu(u16::MAX).mtu(), MAX_MTU);

    let mut fx = setup(false, MODERN);
    let h = fx.dev.handle();
    VirtioDevice::<Mem>::write_config(&mut fx.dev, 0, &[0; 6]);
    h.set_link_up(false);
    assert_eq!(fx.line.config(), 1);
    fx.dev.read_config(6, &mut c[..2]);
    assert_eq!(u16::from_le_bytes([c[0], c[1]]), 0);
    h.set_link_up(false);
    assert_eq!(fx.line.config(), 1, "no change, no notification");
    h.set_link_up(true);
    assert_eq!(fx.line.config(), 2);
    fx.dev.read_config(0, &mut c[..1]);
    assert_eq!(c[0], DEFAULT_MAC[0]);
}

#[test]
fn transmit_sends_the_frame_after_the_header() {
    let mut fx = setup(false, MODERN);
    let f = frame(60);
    fx.send(&hdr12(), &f);
    fx.dev.queue_notify(TRANSMITQ, None);
    let sent = fx.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1, f);
    assert_eq!(fx.tx.take_used(&fx.m), vec![(0, 0)]);
    assert_eq!(fx.line.used(), 1);
    let s = fx.stats();
    assert_eq!((s.tx_frames, s.tx_bytes, s.tx_dropped), (1, 60, 0));
}

#[test]
fn legacy_header_without_mrg_rxbuf_is_10_bytes() {
    let mut fx = setup(false, 0);
    let f = frame(42);
    // Header and the first frame bytes share one descriptor.
    let mut chain = vec![0u8; LEGACY_HDR_SIZE];
    chain.extend_from_slice(&f);
    let a = fx.tx.alloc(chain.len() as u64);
    fx.m.write_slice(&chain, GuestAddress(a)).unwrap();
    fx.tx
        .add_chain(&fx.m, &[desc(a, chain.len() as u32, false)]);
    fx.dev.queue_notify(TRANSMITQ, None);
    assert_eq!(fx.sent()[0].1, f);

    let a = fx.post(1600);
    fx.incoming(NetHdr::default(), &f);
    fx.dev.backend_event(BACKEND_TOKEN);
    assert_eq!(
        fx.rx.take_used(&fx.m),
        vec![(0, (LEGACY_HDR_SIZE + 42) as u32)]
    );
    assert_eq!(fx.read(a + LEGACY_HDR_SIZE as u64, 42), f);
}

#[test]
fn hostile_transmit_chains_are_dropped_not_fatal() {
    let mut fx = setup(false, MODERN);
    // Zero length: one empty descriptor.
    let z = fx.tx.alloc(16);
    fx.tx.add_chain(&fx.m, &[desc(z, 0, false)]);
    // Header only.
    fx.send(&hdr12(), &[]);
    // 64 KiB + 1 bytes of frame.
    fx.send(&hdr12(), &frame(64 * 1024 + 1));
    // One byte over the MTU bound (1500 + 18).
    fx.send(&hdr12(), &frame(1519));
    // A device-writable descriptor in a transmit chain.
    let w = fx.tx.alloc(100);
    fx.tx
        .add_chain(&fx.m, &[desc(w, 12, false), desc(w + 12, 60, true)]);
    // GSO that was never offered.
    let gso = NetHdr {
        gso_type: HDR_GSO_TCPV4,
        ..NetHdr::default()
    };
    fx.send(&gso.to_bytes(), &frame(60));
    // A checksum position past the frame.
    let bad = NetHdr {
        flags: HDR_F_NEEDS_CSUM,
        csum_start: Le16::new(50),
        csum_offset: Le16::new(9),
        ..NetHdr::default()
    };
    fx.send(&bad.to_bytes(), &frame(60));
    // A buffer outside guest memory.
    fx.tx.add_chain(
        &fx.m,
        &[desc(0xffff_ff00, 12, false), desc(0xffff_ff00, 60, false)],
    );
    // And one good frame of exactly the bound.
    fx.send(&hdr12(), &frame(1518));
    fx.dev.queue_notify(TRANSMITQ, None);
    let sent = fx.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.len(), 1518);
    let used = fx.tx.take_used(&fx.m);
    assert_eq!(used.len(), 9, "every chain used");
    assert!(used.iter().all(|&(_, len)| len == 0));
    assert_eq!(fx.stats().tx_dropped, 8);
    assert!(!fx.irq.needs_reset());
}

#[test]
fn transmit_descriptor_loop_needs_reset() {
    let mut fx = setup(false, MODERN);
    let a = fx.tx.alloc(64);
    // Descriptors 0 -> 1 -> 0.
    fx.tx.write_desc(&fx.m, 0, a, 12, F_NEXT, 1);
    fx.tx.write_desc(&fx.m, 1, a + 12, 40, F_NEXT, 0);
    fx.tx.publish(&fx.m, 0);
    fx.dev.queue_notify(TRANSMITQ, None);
    assert!(fx.irq.needs_reset());
    assert_eq!(fx.line.config(), 1);
    assert!(fx.sent().is_empty());
    // The broken queue is no longer served, and nothing panics.
    fx.send(&hdr12(), &frame(60));
    fx.dev.queue_notify(TRANSMITQ, None);
    assert!(fx.sent().is_empty());
}

/// A TCP-over-IPv4 frame with a partial checksum: pseudo-header sum in the
/// checksum field, as Linux leaves it.
fn partial_tcp_frame() -> (Vec<u8>, u16, u16) {
    let mut f = vec![0u8; 14 + 20 + 20 + 10];
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[14 + 9] = 6;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    for (i, b) in f[34..].iter_mut().enumerate() {
        *b = i as u8;
    }
    // Pseudo header: addresses, protocol, TCP length.
    let tcp_len = (f.len() - 34) as u16;
    let mut ph = Vec::new();
    ph.extend_from_slice(&f[26..34]);
    ph.extend_from_slice(&[0, 6]);
    ph.extend_from_slice(&tcp_len.to_be_bytes());
    let start = 34u16;
    let offset = 16u16;
    f[50..52].copy_from_slice(&super::csum::sum(&ph).to_be_bytes());
    (f, start, offset)
}

fn tcp_checksum_ok(f: &[u8]) -> bool {
    let tcp_len = (f.len() - 34) as u16;
    let mut v = Vec::new();
    v.extend_from_slice(&f[26..34]);
    v.extend_from_slice(&[0, 6]);
    v.extend_from_slice(&tcp_len.to_be_bytes());
    v.extend_from_slice(&f[34..]);
    super::csum::sum(&v) == 0xffff
}

#[test]
fn partial_checksum_completed_by_the_device_or_passed_to_a_backend_that_takes_it() {
    let (f, start, offset) = partial_tcp_frame();
    assert!(!tcp_checksum_ok(&f));
    let h = NetHdr {
        flags: HDR_F_NEEDS_CSUM,
        csum_start: Le16::new(start),
        csum_offset: Le16::new(offset),
        ..NetHdr::default()
    };
    let mut fx = setup(false, MODERN | bit(F_CSUM));
    fx.send(&h.to_bytes(), &f);
    fx.dev.queue_notify(TRANSMITQ, None);
    let sent = fx.sent();
    assert!(tcp_checksum_ok(&sent[0].1), "completed by the device");

    let mut fx = setup(true, MODERN | bit(F_CSUM));
    fx.send(&h.to_bytes(), &f);
    fx.dev.queue_notify(TRANSMITQ, None);
    let sent = fx.sent();
    assert_eq!(sent[0].0.flags, HDR_F_NEEDS_CSUM, "passed on");
    assert_eq!(sent[0].1, f);
}

#[test]
fn receive_partial_checksum_completed_without_guest_csum() {
    let (f, start, offset) = partial_tcp_frame();
    let h = NetHdr {
        flags: HDR_F_NEEDS_CSUM,
        csum_start: Le16::new(start),
        csum_offset: Le16::new(offset),
        ..NetHdr::default()
    };
    // Without GUEST_CSUM: flags 0, full checksum (§5.1.6.4).
    let mut fx = setup(true, MODERN);
    assert_eq!(*fx.guest_csum.lock().unwrap(), Some(false));
    let a = fx.post(2048);
    fx.incoming(h, &f);
    fx.dev.backend_event(BACKEND_TOKEN);
    let got = fx.read(a, HDR_SIZE + f.len());
    assert_eq!(got[0], 0, "flags");
    assert!(tcp_checksum_ok(&got[HDR_SIZE..]));
    // With GUEST_CSUM: passed on as partial.
    let mut fx = setup(true, MODERN | bit(F_GUEST_CSUM));
    assert_eq!(*fx.guest_csum.lock().unwrap(), Some(true));
    let a = fx.post(2048);
    fx.incoming(h, &f);
    let valid = NetHdr {
        flags: HDR_F_DATA_VALID,
        ..NetHdr::default()
    };
    let b = fx.post(2048);
    fx.incoming(valid, &frame(60));
    fx.dev.backend_event(BACKEND_TOKEN);
    let got = NetHdr::from_bytes(&fx.read(a, HDR_SIZE)).unwrap();
    assert_eq!(got.flags, HDR_F_NEEDS_CSUM);
    assert_eq!(
        (got.csum_start.get(), got.csum_offset.get()),
        (start, offset)
    );
    assert_eq!(fx.read(a + HDR_SIZE as u64, f.len()), f);
    assert_eq!(fx.read(b, 1)[0], HDR_F_DATA_VALID);
}

#[test]
fn receive_without_mrg_rxbuf_uses_one_buffer_and_drops_what_does_not_fit() {
    let mut fx = setup(false, MODERN);
    let small = fx.post(100);
    let f = frame(200);
    fx.incoming(NetHdr::default(), &f);
    fx.dev.backend_event(BACKEND_TOKEN);
    // Dropped, the buffer kept.
    assert!(fx.rx.take_used(&fx.m).is_empty());
    assert_eq!(fx.stats().rx_dropped, 1);
    fx.incoming(NetHdr::default(), &f[..80]);
    fx.dev.backend_event(BACKEND_TOKEN);
    assert_eq!(fx.rx.take_used(&fx.m), vec![(0, 92)]);
    let h = NetHdr::from_bytes(&fx.read(small, HDR_SIZE)).unwrap();
    assert_eq!(h.num_buffers.get(), 1, "§5.1.6.4: 1 without MRG_RXBUF");
    assert_eq!(fx.read(small + 12, 80), f[..80]);
    assert_eq!(fx.line.used(), 1);
}

#[test]
fn receive_with_mrg_rxbuf_spreads_a_frame_over_full_buffers() {
    let mut fx = setup(false, MODERN | bit(F_MRG_RXBUF));
    let bufs: Vec<u64> = (0..4).map(|_| fx.post(1000)).collect();
    let f = frame(2500);
    fx.incoming(NetHdr::default(), &f);
    fx.dev.backend_event(BACKEND_TOKEN);
    // 12 + 2500 = 2512 bytes: 1000 + 1000 + 512, all used together.
    assert_eq!(fx.rx.take_used(&fx.m), vec![(0, 1000), (1, 1000), (2, 512)]);
    let h = NetHdr::from_bytes(&fx.read(bufs[0], HDR_SIZE)).unwrap();
    assert_eq!(h.num_buffers.get(), 3);
    let mut got = fx.read(bufs[0] + 12, 988);
    got.extend(fx.read(bufs[1], 1000));
    got.extend(fx.read(bufs[2], 512));
    assert_eq!(got, f);
    assert_eq!(fx.line.used(), 1);
    // The fourth buffer is not enough for another big frame: it waits.
    fx.incoming(NetHdr::default(), &f);
    fx.dev.backend_event(BACKEND_TOKEN);
    assert!(fx.rx.take_used(&fx.m).is_empty());
    assert_eq!(fx.dev.backlog.len(), 1);
    fx.post(1000);
    fx.post(1000);
    fx.dev.queue_notify(RECEIVEQ, None);
    assert_eq!(fx.rx.take_used(&fx.m).len(), 3);
    assert_eq!(fx.stats().rx_frames, 2);
    assert_eq!(fx.stats().rx_dropped, 0);
}

#[test]
fn mrg_rxbuf_buffer_smaller_than_the_header_needs_reset() {
    let mut fx = setup(false, MODERN | bit(F_MRG_RXBUF));
    fx.post(8);
    fx.incoming(NetHdr::default(), &frame(60));
    fx.dev.backend_event(BACKEND_TOKEN);
    assert!(fx.irq.needs_reset());
    assert!(fx.rx.take_used(&fx.m).is_empty());
}

#[test]
fn receive_over_the_mtu_is_dropped_when_mtu_negotiated() {
    let mut fx = setup(false, MODERN | bit(F_MTU) | bit(F_MRG_RXBUF));
    fx.post(4096);
    fx.incoming(NetHdr::default(), &frame(1519));
    fx.incoming(NetHdr::default(), &frame(1518));
    fx.dev.backend_event(BACKEND_TOKEN);
    assert_eq!(fx.rx.take_used(&fx.m), vec![(0, 1530)]);
    assert_eq!(fx.stats().rx_dropped, 1);
}

#[test]
fn backlog_is_bounded_and_stops_polling_while_full() {
    let mut fx = setup(false, MODERN);
    for _ in 0..MAX_BACKLOG + 10 {
        fx.incoming(NetHdr::default(), &frame(60));
    }
    let fds = fx.dev.backend_fds();
    assert!(fds[0].readable);
    fx.dev.backend_event(BACKEND_TOKEN);
    assert_eq!(fx.dev.backlog.len(), MAX_BACKLOG);
    // Full: the fd is no longer listed (no spinning on a ready socket).
    assert!(fx.dev.backend_fds().is_empty());
    assert_eq!(fx.wire.lock().unwrap().incoming.len(), 10);
    for _ in 0..16 {
        fx.post(100);
    }
    fx.dev.queue_notify(RECEIVEQ, None);
    assert_eq!(fx.rx.take_used(&fx.m).len(), 16);
    assert!(fx.dev.backend_fds()[0].readable);
    assert_eq!(fx.stats().rx_dropped, 0);
}

#[test]
fn busy_backend_keeps_chains_in_the_ring_until_writable() {
    let mut fx = setup(false, MODERN);
    fx.wire.lock().unwrap().busy = true;
    fx.send(&hdr12(), &frame(60));
    fx.send(&hdr12(), &frame(61));
    fx.dev.queue_notify(TRANSMITQ, None);
    assert!(fx.tx.take_used(&fx.m).is_empty());
    assert!(fx.dev.backend_fds()[0].writable);
    fx.wire.lock().unwrap().busy = false;
    fx.dev.backend_event(BACKEND_TOKEN);
    let sent = fx.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].1.len(), 61);
    assert_eq!(fx.tx.take_used(&fx.m).len(), 2);
}

/// A backend without an output buffer of its own (a TAP: `wants_write` is
/// always false) that refuses a frame: the device itself waits for the fd
/// to be writable, else transmit stays blocked until a frame happens to
/// arrive (or forever while the backlog is full).
#[test]
fn busy_backend_without_output_buffer_is_waited_on_for_writability() {
    let mut fx = setup(false, MODERN);
    {
        let mut w = fx.wire.lock().unwrap();
        w.busy = true;
        w.no_output_buffer = true;
    }
    fx.send(&hdr12(), &frame(60));
    fx.dev.queue_notify(TRANSMITQ, None);
    assert!(fx.tx.take_used(&fx.m).is_empty());
    let fds = fx.dev.backend_fds();
    assert_eq!(fds.len(), 1);
    assert!(
        fds[0].writable,
        "blocked transmit must wait for writability"
    );
    fx.wire.lock().unwrap().busy = false;
    fx.dev.backend_event(BACKEND_TOKEN);
    assert_eq!(fx.sent().len(), 1);
    assert_eq!(fx.tx.take_used(&fx.m).len(), 1);
    assert!(!fx.dev.backend_fds()[0].writable);
}

#[test]
fn reset_drops_the_backlog_and_stops_listing_fds() {
    let mut fx = setup(false, MODERN);
    fx.incoming(NetHdr::default(), &frame(60));
    fx.dev.backend_event(BACKEND_TOKEN);
    assert_eq!(fx.dev.backlog.len(), 1);
    VirtioDevice::<Mem>::reset(&mut fx.dev);
    assert_eq!(fx.dev.backlog.len(), 0);
    assert!(fx.dev.backend_fds().is_empty());
    // Link changes after reset raise nothing.
    fx.dev.handle().set_link_up(false);
    assert_eq!(fx.line.config(), 0);
}

#[test]
fn stream_backend_end_to_end() {
    use std::io::{Read, Write};
    let (a, mut peer) = UnixStream::pair().unwrap();
    let mut dev = Net::new(Box::new(Stream::new(a).unwrap()));
    let m = mem();
    let mut rx = TestRing::new(16, 0);
    let mut tx = TestRing::new(16, 1);
    let (irq, line) = interrupt();
    dev.activate(
        m.clone(),
        irq,
        vec![rx.queue(MODERN), tx.queue(MODERN)],
        MODERN,
    )
    .unwrap();
    let h = tx.alloc(12 + 60);
    m.write_slice(&frame(60), GuestAddress(h + 12)).unwrap();
    tx.add_chain(&m, &[desc(h, 72, false)]);
    dev.queue_notify(TRANSMITQ, None);
    let mut got = [0u8; 64];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got[..4], &60u32.to_be_bytes());
    assert_eq!(got[4..].to_vec(), frame(60));
    let b = rx.alloc(2048);
    rx.add_chain(&m, &[desc(b, 2048, true)]);
    peer.write_all(&3u32.to_be_bytes()).unwrap();
    peer.write_all(b"abc").unwrap();
    dev.backend_event(BACKEND_TOKEN);
    assert_eq!(rx.take_used(&m), vec![(0, 15)]);
    let mut d = [0u8; 3];
    m.read_slice(&mut d, GuestAddress(b + 12)).unwrap();
    assert_eq!(&d, b"abc");
    // The peer closes: link down, a configuration change, no more polling.
    let handle = dev.handle();
    drop(peer);
    dev.backend_event(BACKEND_TOKEN);
    assert!(!handle.link_up());
    assert_eq!(line.config(), 1);
    assert!(dev.backend_fds().is_empty());
}

#[test]
fn unknown_flags_are_ignored_and_csum_fields_unused_without_needs_csum() {
    // §5.1.6.2.2: flag bits the device does not know are ignored; without
    // NEEDS_CSUM, csum_start / csum_offset are not used (here they point
    // inside the frame: using them would change bytes).
    let h = NetHdr {
        flags: !HDR_F_NEEDS_CSUM,
        csum_start: Le16::new(14),
        csum_offset: Le16::new(2),
        ..NetHdr::default()
    };
    for takes_hdr in [false, true] {
        let mut fx = setup(takes_hdr, MODERN | bit(F_CSUM));
        let f = frame(60);
        fx.send(&h.to_bytes(), &f);
        fx.dev.queue_notify(TRANSMITQ, None);
        let sent = fx.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1, f, "frame unchanged");
        assert_eq!(fx.stats().tx_dropped, 0);
    }
}

/// A driver that keeps adding transmit chains while the device serves them
/// (a vCPU beside the worker thread) gets more than the device's cap of
/// chains per notification served. With EVENT_IDX the driver will not
/// notify for the chains it added past the `avail_event` the device
/// published (§2.7.10), so the device wakes itself through its own eventfd
/// (`MORE_TOKEN` in `backend_fds`; the platform, here [`run_backends`] as
/// `poll_backends` or a worker's epoll would, calls `backend_event` for
/// it) and sends them: all are used, and `avail_event` is where the
/// driver's next chain notifies.
#[test]
fn transmit_cap_with_event_idx_leaves_no_chain_stranded() {
    use vmmio_spec::features::VIRTIO_F_EVENT_IDX;
    let mut fx = setup(false, MODERN | bit(VIRTIO_F_EVENT_IDX));
    let size = fx.tx.size;
    let mut chain = hdr12().to_vec();
    chain.extend_from_slice(&frame(60));
    let buf = fx.tx.alloc(chain.len() as u64);
    fx.m.write_slice(&chain, GuestAddress(buf)).unwrap();
    // Every table entry is a one-descriptor chain over the same frame.
    for i in 0..size {
        fx.tx.write_desc(&fx.m, i, buf, chain.len() as u32, 0, 0);
    }
    for head in 0..size / 2 {
        fx.tx.publish(&fx.m, head);
    }
    // The concurrent driver: one more chain per frame sent, 100 in all,
    // always 8 table entries ahead of the chain in flight.
    let extra = 100u16;
    fx.wire.lock().unwrap().on_send =
        Some(Box::new(refiller(fx.m.clone(), &fx.tx, size / 2, extra)));
    fx.dev.queue_notify(TRANSMITQ, None);
    let total = size / 2 + extra;
    let capped = fx.tx.take_used(&fx.m).len();
    assert!(capped < usize::from(total), "the cap holds: {capped} used");
    let events = run_backends(&mut fx.dev, 16);
    let used = capped + fx.tx.take_used(&fx.m).len();
    let avail_event = avail_event(&fx.m, &fx.tx);
    assert_eq!(
        (used, avail_event),
        (usize::from(total), total),
        "after {events} more-work events: the driver's next chain must notify"
    );
    assert!(fx.dev.backend_fds().iter().all(|b| b.token != MORE_TOKEN));
}
