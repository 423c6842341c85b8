//! The vsock driver's unit tests: packets handed to the driver directly
//! (`Vsock::packet`) and a scripted device (`vsock_handler`).

use super::*;
use crate::scripted::{vsock_handler, ArenaHal, Scripted};
use alloc::vec;

fn device(version: u32, cid: u64) -> Scripted {
    let mut s = Scripted::new(version, device_id::VSOCK, 3, 16);
    s.device_features |= bit(F_STREAM) | bit(F_NO_IMPLIED_STREAM);
    s.config = cid.to_le_bytes().to_vec();
    s
}

/// A packet from the host (CID 2) to `cid`.
fn pkt(cid: u64, opc: u16, type_: u16, src_port: u32, dst_port: u32, len: u32) -> Header {
    Header {
        src_cid: Le64::new(HOST_CID),
        dst_cid: Le64::new(cid),
        src_port: Le32::new(src_port),
        dst_port: Le32::new(dst_port),
        len: Le32::new(len),
        type_: Le16::new(type_),
        op: Le16::new(opc),
        buf_alloc: Le32::new(4096),
        ..Header::default()
    }
}

/// §5.10.3.1: the driver SHOULD accept NO_IMPLIED_STREAM; §5.10.4:
/// `guest_cid` is read at initialisation (Version 2: two 32-bit reads).
#[test]
fn negotiates_stream_features_and_reads_the_guest_cid() {
    for version in [1, 2] {
        let mut s = device(version, 0x1234_5678);
        let t = Transport::probe(&mut s).unwrap().unwrap();
        let mut vs = Vsock::new(t, ArenaHal).unwrap();
        assert_eq!(vs.guest_cid(), 0x1234_5678);
        // Legacy windows have 32 feature bits: both fit.
        assert!(vs.transport().has_feature(F_STREAM));
        assert!(vs.transport().has_feature(F_NO_IMPLIED_STREAM));
    }
}

/// §5.10.6.4 (driver): a RST reply for a packet of unknown `type`; and
/// a packet for another CID, or with `len` beyond what the device
/// wrote, is dropped.
#[test]
fn unknown_type_is_answered_with_rst() {
    let mut s = device(2, 5);
    let t = Transport::probe(&mut s).unwrap().unwrap();
    let mut vs = Vsock::new(t, ArenaHal).unwrap();
    vs.listen(80).unwrap();
    vs.packet(&pkt(5, op::REQUEST, 7, 1000, 80, 0).to_bytes());
    assert!(vs.accept(80).is_none());
    let rst = vs.replies.front().copied().expect("a RST reply");
    assert_eq!(rst.op.get(), op::RST);
    assert_eq!(rst.type_.get(), 7);
    assert_eq!((rst.src_cid.get(), rst.dst_cid.get()), (5, HOST_CID));
    assert_eq!((rst.src_port.get(), rst.dst_port.get()), (80, 1000));
    vs.replies.clear();
    vs.packet(&pkt(6, op::REQUEST, TYPE_STREAM, 1000, 80, 0).to_bytes());
    let mut short = pkt(5, op::REQUEST, TYPE_STREAM, 1000, 80, 10)
        .to_bytes()
        .to_vec();
    short.extend_from_slice(&[0; 9]);
    vs.packet(&short);
    vs.packet(&[0; 20]);
    assert!(vs.replies.is_empty() && vs.accept(80).is_none());
    assert_eq!(vs.stats().malformed, 3);
}

/// §5.10.6.6 (driver): on TRANSPORT_RESET the driver MUST fetch
/// `guest_cid` again, MUST shut down existing connections, and listen
/// sockets MUST remain operational with the current CID.
#[test]
fn transport_reset_rereads_the_cid_drops_connections_keeps_listeners() {
    let mut s = device(2, 5);
    let t = Transport::probe(&mut s).unwrap().unwrap();
    let mut vs = Vsock::new(t, ArenaHal).unwrap();
    vs.listen(80).unwrap();
    let out = vs.connect(HOST_CID, 1234).unwrap();
    vs.packet(&pkt(5, op::REQUEST, TYPE_STREAM, 1000, 80, 0).to_bytes());
    let inc = vs.accept(80).unwrap();
    vs.transport().io_mut().config = 9u64.to_le_bytes().to_vec();
    vs.transport_reset().unwrap();
    assert_eq!(vs.guest_cid(), 9);
    assert_eq!((vs.state(out), vs.state(inc)), (None, None));
    // Still listening, at the new CID; the old CID is gone.
    vs.packet(&pkt(5, op::REQUEST, TYPE_STREAM, 1001, 80, 0).to_bytes());
    assert!(vs.accept(80).is_none());
    vs.packet(&pkt(9, op::REQUEST, TYPE_STREAM, 1001, 80, 0).to_bytes());
    let again = vs.accept(80).unwrap();
    assert_eq!(vs.state(again), Some(ConnState::Connected));
    assert_eq!(vs.stats().transport_resets, 1);
}

/// The device is held to the credit the driver granted: payload
/// beyond `buf_alloc` resets the connection.
#[test]
fn device_exceeding_the_driver_credit_is_reset() {
    let mut s = device(2, 5);
    let t = Transport::probe(&mut s).unwrap().unwrap();
    let opts = VsockOptions {
        buf_alloc: 16,
        ..VsockOptions::default()
    };
    let mut vs = Vsock::with_options(t, ArenaHal, opts).unwrap();
    vs.listen(80).unwrap();
    vs.packet(&pkt(5, op::REQUEST, TYPE_STREAM, 1000, 80, 0).to_bytes());
    let id = vs.accept(80).unwrap();
    let mut rw = pkt(5, op::RW, TYPE_STREAM, 1000, 80, 16)
        .to_bytes()
        .to_vec();
    rw.extend_from_slice(&[1; 16]);
    vs.packet(&rw);
    assert_eq!(vs.state(id), Some(ConnState::Connected));
    let mut rw = pkt(5, op::RW, TYPE_STREAM, 1000, 80, 1).to_bytes().to_vec();
    rw.push(2);
    vs.packet(&rw);
    assert_eq!(vs.state(id), None);
    assert_eq!(vs.replies.back().map(|h| h.op.get()), Some(op::RST));
    assert_eq!(vs.stats().malformed, 1);
}

// The driver against a scripted device: packets go through the queues.

const CID: u64 = 5;
const PEER: u32 = 1234;

type Driver<'a> = Vsock<&'a mut Scripted, crate::IdentityHal>;

fn driver(s: &mut Scripted) -> Driver<'_> {
    s.handler = Some(vsock_handler);
    Vsock::new(Transport::probe(s).unwrap().unwrap(), crate::IdentityHal).unwrap()
}

/// The packets the driver sent since the last call: header, payload.
fn sent(vs: &mut Driver<'_>) -> Vec<(Header, Vec<u8>)> {
    core::mem::take(&mut vs.transport().io_mut().tx_packets)
        .into_iter()
        .map(|p| {
            let h = Header::from_bytes(p[..HEADER_SIZE].try_into().unwrap());
            (h, p[HEADER_SIZE..].to_vec())
        })
        .collect()
}

fn ops(packets: &[(Header, Vec<u8>)]) -> Vec<u16> {
    packets.iter().map(|(h, _)| h.op.get()).collect()
}

/// A packet from the host's `PEER` port to local `port`.
fn host(opc: u16, port: u32, flags: u32, buf_alloc: u32, fwd_cnt: u32) -> Header {
    let mut h = pkt(CID, opc, TYPE_STREAM, PEER, port, 0);
    h.flags = Le32::new(flags);
    h.buf_alloc = Le32::new(buf_alloc);
    h.fwd_cnt = Le32::new(fwd_cnt);
    h
}

/// Delivers `h` with `payload` through the receive queue, then polls.
fn deliver(vs: &mut Driver<'_>, mut h: Header, payload: &[u8]) {
    h.len = Le32::new(u32::try_from(payload.len()).unwrap());
    let mut p = h.to_bytes().to_vec();
    p.extend_from_slice(payload);
    let io = vs.transport().io_mut();
    io.rx_packets.push_back(p);
    io.retry_parked();
    vs.poll().unwrap();
}

fn bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| u8::try_from(i % 251).unwrap()).collect()
}

/// §5.10.5: event buffers and receive buffers are posted before
/// DRIVER_OK, each a disjoint part of the driver's DMA buffers.
#[test]
fn receive_and_event_buffers_are_posted_in_disjoint_slots() {
    let mut s = device(2, CID);
    let mut vs = driver(&mut s);
    let rx_base = vs.rx_buf.as_ref().unwrap().paddr();
    let ev_base = vs.ev_buf.as_ref().unwrap().paddr();
    let parked = |q: u16, vs: &mut Driver<'_>| -> Vec<(u64, u32)> {
        let mut v: Vec<(u64, u32)> = vs
            .transport()
            .io_mut()
            .parked
            .iter()
            .filter(|(i, _)| *i == u32::from(q))
            .flat_map(|(_, c)| c.writable.clone())
            .collect();
        v.sort_unstable();
        v
    };
    let rx: Vec<(u64, u32)> = (0..16u64).map(|k| (rx_base + k * 4096, 4096)).collect();
    assert_eq!(parked(RXQ, &mut vs), rx);
    let ev: Vec<(u64, u32)> = (0..4u64).map(|k| (ev_base + k * 8, 4)).collect();
    assert_eq!(parked(EVENTQ, &mut vs), ev);
}

#[test]
fn a_stream_through_the_queues_respects_credit_and_shutdown() {
    let mut s = device(2, CID);
    let mut vs = driver(&mut s);
    let id = vs.connect(HOST_CID, PEER).unwrap();
    let req = sent(&mut vs);
    assert_eq!(ops(&req), [op::REQUEST]);
    let h = req[0].0;
    assert_eq!((h.src_cid.get(), h.dst_cid.get()), (CID, HOST_CID));
    assert_eq!((h.src_port.get(), h.dst_port.get()), (id.local_port, PEER));
    assert_eq!((h.type_.get(), h.len.get()), (TYPE_STREAM, 0));
    assert_eq!((h.buf_alloc.get(), h.fwd_cnt.get()), (64 * 1024, 0));
    assert_eq!(vs.state(id), Some(ConnState::Connecting));

    deliver(
        &mut vs,
        host(op::RESPONSE, id.local_port, 0, 40_000, 0),
        &[],
    );
    assert_eq!(vs.state(id), Some(ConnState::Connected));
    assert_eq!(vs.peer_credit(id), 40_000);
    // Credit-limited, in packets of at most MAX_TX_PAYLOAD.
    let data = bytes(50_000);
    assert_eq!(vs.send(id, &data).unwrap(), 40_000);
    assert_eq!(vs.peer_credit(id), 0);
    // Out of credit with data left: one CREDIT_REQUEST goes with them.
    let mut rw = sent(&mut vs);
    assert_eq!(
        ops(&rw),
        [op::RW, op::RW, op::RW, op::CREDIT_REQUEST],
        "packets of at most MAX_TX_PAYLOAD"
    );
    rw.pop();
    let lens: Vec<usize> = rw.iter().map(|(_, p)| p.len()).collect();
    assert_eq!(
        lens,
        [MAX_TX_PAYLOAD, MAX_TX_PAYLOAD, 40_000 - 2 * MAX_TX_PAYLOAD]
    );
    assert!(rw.iter().all(|(h, p)| h.len.get() as usize == p.len()));
    let joined: Vec<u8> = rw.iter().flat_map(|(_, p)| p.clone()).collect();
    assert!(joined == data[..40_000], "payload bytes in order");
    // Asked once: nothing more until the peer speaks.
    assert_eq!(vs.send(id, &data[40_000..]).unwrap(), 0);
    assert!(sent(&mut vs).is_empty());
    deliver(
        &mut vs,
        host(op::CREDIT_UPDATE, id.local_port, 0, 40_000, 40_000),
        &[],
    );
    assert_eq!(vs.peer_credit(id), 40_000);
    assert_eq!(vs.stats().credit_updates_received, 1);
    assert_eq!(vs.stats().credit_requests_sent, 1);
    // Data-limited: the last packet carries what is left, and no empty
    // packet follows.
    assert_eq!(vs.send(id, &data[..20_000]).unwrap(), 20_000);
    let p = sent(&mut vs);
    let lens: Vec<usize> = p.iter().map(|(_, p)| p.len()).collect();
    assert_eq!(lens, [16_340, 3_660], "16 KiB slots less the header");
    assert_eq!(p[1].1[..], data[16_340..20_000]);

    // Receiving: bytes in order; the next packet carries fwd_cnt.
    deliver(
        &mut vs,
        host(op::RW, id.local_port, 0, 40_000, 50_000),
        &bytes(1000),
    );
    let mut out = [0u8; 600];
    assert_eq!(vs.recv(id, &mut out).unwrap(), 600);
    assert_eq!(out[..], bytes(1000)[..600]);
    assert_eq!(vs.recv(id, &mut out).unwrap(), 400);
    assert_eq!(out[..400], bytes(1000)[600..]);
    assert_eq!(vs.recv(id, &mut out).unwrap(), 0);
    vs.send(id, b"x").unwrap();
    let x = sent(&mut vs);
    assert_eq!(x[0].0.fwd_cnt.get(), 1000);

    // The peer stops receiving: sending is refused, reading goes on.
    deliver(
        &mut vs,
        host(
            op::SHUTDOWN,
            id.local_port,
            SHUTDOWN_F_RECEIVE,
            40_000,
            50_001,
        ),
        &[],
    );
    assert_eq!(vs.send(id, b"y"), Err(Error::NotConnected));
    assert!(!vs.is_eof(id));
    deliver(
        &mut vs,
        host(op::RW, id.local_port, 0, 40_000, 50_001),
        b"tail",
    );
    // Then it stops sending: end of file once the data is read, and the
    // clean disconnect ends with RST.
    deliver(
        &mut vs,
        host(op::SHUTDOWN, id.local_port, SHUTDOWN_F_SEND, 40_000, 50_001),
        &[],
    );
    assert!(!vs.is_eof(id));
    assert_eq!(vs.state(id), Some(ConnState::Connected));
    assert_eq!(vs.recv(id, &mut out).unwrap(), 4);
    assert!(vs.is_eof(id));
    assert_eq!(vs.recv(id, &mut out).unwrap(), 0);
    // Data after the peer's SHUTDOWN(SEND) breaks the protocol: the
    // connection is reset.
    deliver(
        &mut vs,
        host(op::RW, id.local_port, 0, 40_000, 50_001),
        b"late",
    );
    assert_eq!(vs.state(id), None);
    assert_eq!(vs.stats().malformed, 1);
    assert_eq!(ops(&sent(&mut vs)).last(), Some(&op::RST));
}

#[test]
fn local_shutdown_close_and_abort_send_their_packets() {
    let mut s = device(2, CID);
    let mut vs = driver(&mut s);
    let a = vs.connect(HOST_CID, PEER).unwrap();
    let b = vs.connect(HOST_CID, PEER).unwrap();
    assert_ne!(a.local_port, b.local_port);
    for id in [a, b] {
        deliver(&mut vs, host(op::RESPONSE, id.local_port, 0, 4096, 0), &[]);
    }
    sent(&mut vs);
    vs.shutdown(a, SHUTDOWN_F_SEND | 0x80).unwrap();
    assert_eq!(vs.send(a, b"z"), Err(Error::NotConnected));
    let p = sent(&mut vs);
    assert_eq!(ops(&p), [op::SHUTDOWN]);
    assert_eq!(p[0].0.flags.get(), SHUTDOWN_F_SEND);
    vs.close(a).unwrap();
    assert_eq!(vs.state(a), Some(ConnState::Closing));
    let p = sent(&mut vs);
    assert_eq!(ops(&p), [op::SHUTDOWN]);
    assert_eq!(p[0].0.flags.get(), SHUTDOWN_F_RECEIVE | SHUTDOWN_F_SEND);
    // Not read by anyone: data after SHUTDOWN(RECEIVE) is counted
    // consumed, and the peer's RST ends the connection.
    deliver(&mut vs, host(op::RST, a.local_port, 0, 4096, 0), &[]);
    assert_eq!(vs.state(a), None);
    assert!(vs.is_eof(a));
    // The peer closes both ways with nothing left to read: RST ends it.
    let c = vs.connect(HOST_CID, PEER).unwrap();
    deliver(&mut vs, host(op::RESPONSE, c.local_port, 0, 4096, 0), &[]);
    sent(&mut vs);
    let both = SHUTDOWN_F_RECEIVE | SHUTDOWN_F_SEND;
    deliver(
        &mut vs,
        host(op::SHUTDOWN, c.local_port, both, 4096, 0),
        &[],
    );
    assert_eq!(vs.state(c), None);
    assert_eq!(ops(&sent(&mut vs)), [op::RST]);
    vs.abort(b).unwrap();
    assert_eq!(vs.state(b), None);
    let p = sent(&mut vs);
    assert_eq!(ops(&p), [op::RST]);
    assert_eq!(p[0].0.src_port.get(), b.local_port);
    assert_eq!(vs.send(b, b"z"), Err(Error::NoSuchConnection));
}

#[test]
fn listening_accepting_and_unlistening() {
    let mut s = device(2, CID);
    let mut vs = driver(&mut s);
    vs.listen(80).unwrap();
    assert_eq!(vs.listen(80), Err(Error::PortInUse(80)));
    deliver(&mut vs, host(op::REQUEST, 80, 0, 4096, 0), &[]);
    let id = vs.accept(80).unwrap();
    assert_eq!(vs.state(id), Some(ConnState::Connected));
    assert_eq!(ops(&sent(&mut vs)), [op::RESPONSE]);
    vs.unlisten(80);
    let mut h = host(op::REQUEST, 80, 0, 4096, 0);
    h.src_port = Le32::new(PEER + 1);
    deliver(&mut vs, h, &[]);
    assert!(vs.accept(80).is_none());
    assert_eq!(ops(&sent(&mut vs)), [op::RST]);
    // The accepted connection stays.
    assert_eq!(vs.state(id), Some(ConnState::Connected));
    // connect() skips a port that is listened on.
    vs.listen(vs.next_port).unwrap();
    let skipped = vs.next_port;
    let c = vs.connect(HOST_CID, PEER).unwrap();
    assert_eq!(c.local_port, skipped + 1);
}

#[test]
fn reading_a_quarter_of_the_window_sends_a_credit_update() {
    let mut s = device(2, CID);
    let mut vs = driver(&mut s);
    let id = vs.connect(HOST_CID, PEER).unwrap();
    deliver(&mut vs, host(op::RESPONSE, id.local_port, 0, 4096, 0), &[]);
    sent(&mut vs);
    // 64 KiB window: an update once 16 KiB were read, not before.
    let chunk = bytes(RX_BUFFER_SIZE - HEADER_SIZE);
    let mut out = vec![0u8; 64 * 1024];
    let mut read = 0;
    for _ in 0..5 {
        deliver(&mut vs, host(op::RW, id.local_port, 0, 4096, 0), &chunk);
        read += vs.recv(id, &mut out).unwrap();
        let p = sent(&mut vs);
        if read < 16 * 1024 {
            assert!(p.is_empty(), "{read}");
        } else {
            assert_eq!(ops(&p), [op::CREDIT_UPDATE]);
            assert_eq!(p[0].0.fwd_cnt.get() as usize, read);
            break;
        }
    }
    assert_eq!(vs.stats().credit_updates_sent, 1);
    // A CREDIT_REQUEST from the peer is answered.
    deliver(
        &mut vs,
        host(op::CREDIT_REQUEST, id.local_port, 0, 4096, 0),
        &[],
    );
    assert_eq!(ops(&sent(&mut vs)), [op::CREDIT_UPDATE]);
}

fn reset_event(s: &mut Scripted, q: u32, c: &crate::scripted::Chain) -> Option<u32> {
    if q == u32::from(EVENTQ) {
        let n = crate::scripted::fill(&c.writable, &EVENT_TRANSPORT_RESET.to_le_bytes());
        Some(u32::try_from(n).unwrap())
    } else {
        vsock_handler(s, q, c)
    }
}

#[test]
fn a_transport_reset_event_drops_connections_and_rereads_the_cid() {
    let mut s = device(2, CID);
    let mut vs = driver(&mut s);
    let id = vs.connect(HOST_CID, PEER).unwrap();
    let io = vs.transport().io_mut();
    io.config = 9u64.to_le_bytes().to_vec();
    io.handler = Some(reset_event);
    io.retry_parked();
    io.handler = Some(vsock_handler);
    vs.poll().unwrap();
    assert_eq!(vs.stats().transport_resets, 1);
    assert_eq!(vs.guest_cid(), 9);
    assert_eq!(vs.state(id), None);
    // The event buffers went back to the device.
    let io = vs.transport().io_mut();
    let events = io
        .parked
        .iter()
        .filter(|(q, _)| *q == u32::from(EVENTQ))
        .count();
    assert_eq!(events, 4);
}

/// At most MAX_REPLIES replies wait for a transmit slot.
#[test]
fn replies_are_bounded() {
    let mut s = device(2, CID);
    let mut vs = driver(&mut s);
    for port in 0..u32::try_from(MAX_REPLIES + 10).unwrap() {
        vs.packet(&host(op::RW, port, 0, 4096, 0).to_bytes());
    }
    assert_eq!(vs.replies.len(), MAX_REPLIES);
}

/// More packets than receive buffers: the buffers go back to the device
/// with a notification; a poll that reposts nothing notifies nothing.
#[test]
fn receive_buffers_are_reposted_with_a_notification() {
    let mut s = device(2, CID);
    let mut vs = driver(&mut s);
    let id = vs.connect(HOST_CID, PEER).unwrap();
    deliver(&mut vs, host(op::RESPONSE, id.local_port, 0, 4096, 0), &[]);
    let io = vs.transport().io_mut();
    for k in 0..40u8 {
        let mut h = host(op::RW, id.local_port, 0, 4096, 0);
        h.len = Le32::new(1);
        let mut p = h.to_bytes().to_vec();
        p.push(k);
        io.rx_packets.push_back(p);
    }
    io.retry_parked();
    let mut got = Vec::new();
    let mut out = [0u8; 64];
    for _ in 0..8 {
        let n = vs.recv(id, &mut out).unwrap();
        got.extend_from_slice(&out[..n]);
    }
    assert_eq!(got, (0..40u8).collect::<Vec<u8>>());
    let notified = vs.transport().io_mut().notifications.len();
    vs.poll().unwrap();
    assert_eq!(vs.transport().io_mut().notifications.len(), notified);
}

fn park_tx(s: &mut Scripted, q: u32, c: &crate::scripted::Chain) -> Option<u32> {
    if q == u32::from(TXQ) {
        None
    } else {
        vsock_handler(s, q, c)
    }
}

/// Packets in flight at once sit in disjoint transmit slots; a poll
/// that moved something does not read `Status`, one that moved nothing
/// while connections are open does (and finds DEVICE_NEEDS_RESET).
#[test]
fn tx_slots_are_disjoint_and_an_idle_poll_checks_the_status() {
    let mut s = device(2, CID);
    let mut vs = driver(&mut s);
    let id = vs.connect(HOST_CID, PEER).unwrap();
    deliver(
        &mut vs,
        host(op::RESPONSE, id.local_port, 0, 40_000, 0),
        &[],
    );
    sent(&mut vs);
    vs.transport().io_mut().handler = Some(park_tx);
    for k in 0..3u8 {
        assert_eq!(vs.send(id, &[k; 100]).unwrap(), 100);
    }
    let io = vs.transport().io_mut();
    io.handler = Some(vsock_handler);
    io.retry_parked();
    let p = sent(&mut vs);
    assert_eq!(p.len(), 3);
    for (k, (_, payload)) in (0u8..).zip(&p) {
        assert_eq!(payload[..], [k; 100], "packet {k}");
    }
    // Only transmit completions to take back: no Status read.
    vs.transport().io_mut().status |= vmmio_spec::status::DEVICE_NEEDS_RESET;
    vs.poll().unwrap();
    // Only a received packet: no Status read either.
    let mut h = host(op::RW, id.local_port, 0, 40_000, 0);
    h.len = Le32::new(1);
    let mut pkt = h.to_bytes().to_vec();
    pkt.push(1);
    let io = vs.transport().io_mut();
    io.rx_packets.push_back(pkt);
    io.retry_parked();
    vs.poll().unwrap();
    // Only an event (an unknown one): no Status read either.
    let io = vs.transport().io_mut();
    io.rx_packets.push_back(7u32.to_le_bytes().to_vec());
    io.handler = Some(event_from_rx);
    io.retry_parked();
    io.handler = Some(vsock_handler);
    vs.poll().unwrap();
    // Nothing moved, a connection open: the device's state is read.
    assert_eq!(vs.poll(), Err(Error::DeviceNeedsReset));
}

#[test]
fn interrupts_are_acknowledged_then_polled_and_reinit_recovers() {
    let mut s = device(2, CID);
    let mut vs = driver(&mut s);
    let id = vs.connect(HOST_CID, PEER).unwrap();
    let mut h = host(op::RESPONSE, id.local_port, 0, 4096, 0);
    h.len = Le32::new(0);
    let io = vs.transport().io_mut();
    io.rx_packets.push_back(h.to_bytes().to_vec());
    io.retry_parked();
    let ev = vs.handle_interrupt().unwrap();
    assert!(ev.used_buffers);
    assert_eq!(vs.state(id), Some(ConnState::Connected));
    let io = vs.transport().io_mut();
    assert_eq!(io.acks.last(), Some(&vmmio_spec::mmio::INT_VRING));
    io.status |= vmmio_spec::status::DEVICE_NEEDS_RESET;
    io.interrupt_status |= vmmio_spec::mmio::INT_CONFIG;
    assert_eq!(vs.handle_interrupt(), Err(Error::DeviceNeedsReset));
    assert_eq!(vs.connect(HOST_CID, PEER), Err(Error::Broken));
    vs.reinit().unwrap();
    assert_eq!(vs.state(id), None);
    let again = vs.connect(HOST_CID, PEER).unwrap();
    assert_eq!(vs.state(again), Some(ConnState::Connecting));
    // A device that never stops: reinit gives up, bounded.
    vs.transport().set_limits(crate::Limits {
        reset_polls: 5,
        queue_polls: 5,
        ..crate::Limits::default()
    });
    let io = vs.transport().io_mut();
    io.reset_stuck = true;
    io.queue_stop_stuck = true;
    assert!(matches!(vs.reinit(), Err(Error::Timeout { .. })));
}

/// Events: an unknown event is not a TRANSPORT_RESET, wherever it lands.
#[test]
fn events_are_read_from_their_own_slot() {
    fn events(ids: &'static [u32]) -> u64 {
        let mut s = device(2, CID);
        let mut vs = driver(&mut s);
        let io = vs.transport().io_mut();
        io.rx_packets
            .extend(ids.iter().map(|e| e.to_le_bytes().to_vec()));
        io.handler = Some(event_from_rx);
        io.retry_parked();
        io.handler = Some(vsock_handler);
        vs.poll().unwrap();
        vs.stats().transport_resets
    }
    assert_eq!(events(&[7, 7, 7]), 0);
    assert_eq!(events(&[7, EVENT_TRANSPORT_RESET]), 1);
}

/// Event queue buffers take the next of `rx_packets` (the receive queue's
/// buffers stay parked).
fn event_from_rx(s: &mut Scripted, q: u32, c: &crate::scripted::Chain) -> Option<u32> {
    if q == u32::from(EVENTQ) {
        let e = s.rx_packets.pop_front()?;
        Some(u32::try_from(crate::scripted::fill(&c.writable, &e)).unwrap())
    } else {
        None
    }
}
