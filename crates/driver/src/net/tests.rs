//! The network driver against the scripted device (`net_handler`): buffer
//! layout, counters, transmit slots and receive reposting.

use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::scripted::{net_handler, Chain, Scripted};
use crate::IdentityHal;

/// The virtio-net header's length with VIRTIO_F_VERSION_1.
const HDR: usize = 12;
const HDR_LEN: u32 = 12;

fn device(max: u32, features: u64, mtu: u16) -> Scripted {
    let mut s = Scripted::new(2, device_id::NET, 2, max);
    s.device_features |= features;
    s.handler = Some(net_handler);
    s.config = vec![0; 12];
    // `mtu` at config::MTU (10).
    s.config[10..12].copy_from_slice(&mtu.to_le_bytes());
    s
}

fn net(s: &mut Scripted) -> Net<&mut Scripted, IdentityHal> {
    Net::new(Transport::probe(s).unwrap().unwrap(), IdentityHal).unwrap()
}

/// A packet as the device delivers it: header (`num_buffers` 1), frame.
fn packet(frame: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; HDR];
    p[10] = 1;
    p.extend_from_slice(frame);
    p
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from(i % 256).unwrap() ^ seed)
        .collect()
}

/// Receive buffers the device holds: each one's descriptor lengths.
fn posted_rx(s: &Scripted) -> Vec<Vec<u32>> {
    s.parked
        .iter()
        .filter(|(q, _)| *q == u32::from(RECEIVEQ))
        .map(|(_, c)| c.writable.iter().map(|w| w.1).collect())
        .collect()
}

#[test]
fn receive_buffers_are_one_slot_each_sized_by_the_mtu() {
    let slot = |n: usize| u32::try_from(n * SLOT_SIZE - HDR).unwrap();
    // (features, device MTU, driver MTU, data part of a receive buffer)
    let cases = [
        (0, 0, 1500, slot(1)),
        (bit(F_MTU), 9000, 9000, slot(5)),
        // Merged buffers: 2 KiB each whatever the MTU.
        (bit(F_MTU) | bit(F_MRG_RXBUF), 9000, 9000, slot(1)),
    ];
    for (features, dev_mtu, mtu, data) in cases {
        let mut s = device(16, features, dev_mtu);
        let mut n = net(&mut s);
        assert_eq!(n.mtu(), mtu);
        assert_eq!(n.max_frame_len(), mtu + 18);
        // 16 entries, two descriptors a buffer: 8 buffers posted.
        let rx = posted_rx(n.transport().io_mut());
        assert_eq!(rx.len(), 8, "{features:#x}");
        assert!(
            rx.iter().all(|l| *l == [HDR_LEN, data]),
            "{features:#x}: {rx:?}"
        );
    }
}

#[test]
fn frames_cross_both_ways_and_are_counted() {
    let mut s = device(16, 0, 0);
    let mut n = net(&mut s);
    let max = n.max_frame_len();
    let (f1, f2) = (frame(60, 1), frame(max, 2));
    n.transmit(&f1).unwrap();
    n.transmit(&f2).unwrap();
    for bad in [frame(max + 1, 3), Vec::new()] {
        assert_eq!(
            n.transmit(&bad),
            Err(Error::FrameTooLong {
                len: bad.len(),
                max
            })
        );
    }
    let io = n.transport().io_mut();
    assert_eq!(io.tx_packets.len(), 2);
    for (p, f) in io.tx_packets.iter().zip([&f1, &f2]) {
        assert_eq!(p[..HDR], [0; HDR]);
        assert_eq!(p[HDR..], f[..]);
    }
    // A completion shorter than the header is dropped and counted.
    io.rx_packets
        .extend([packet(&f1), vec![0u8; 4], packet(&f2)]);
    io.retry_parked();
    assert_eq!(n.receive(<[u8]>::to_vec).unwrap(), Some(f1));
    assert_eq!(n.receive(<[u8]>::to_vec).unwrap(), Some(f2));
    assert_eq!(n.receive(<[u8]>::to_vec).unwrap(), None);
    assert_eq!(
        n.stats(),
        NetStats {
            tx_frames: 2,
            rx_frames: 2,
            rx_errors: 1
        }
    );
}

#[test]
fn receive_buffers_go_back_to_the_device_with_a_notification() {
    let mut s = device(16, 0, 0);
    let mut n = net(&mut s);
    // More frames than buffers: only reposting (and telling the device)
    // gets them all through.
    let frames: Vec<Vec<u8>> = (0..20).map(|i| frame(100, i)).collect();
    let io = n.transport().io_mut();
    io.rx_packets.extend(frames.iter().map(|f| packet(f)));
    io.retry_parked();
    for f in &frames {
        assert_eq!(n.receive(<[u8]>::to_vec).unwrap().as_ref(), Some(f));
    }
    // Nothing received, nothing reposted: no notification.
    let sent = n.transport().io_mut().notifications.len();
    assert_eq!(n.receive(<[u8]>::to_vec).unwrap(), None);
    assert_eq!(n.transport().io_mut().notifications.len(), sent);
}

fn park_tx(s: &mut Scripted, q: u32, c: &Chain) -> Option<u32> {
    if q == u32::from(TRANSMITQ) {
        None
    } else {
        net_handler(s, q, c)
    }
}

#[test]
fn transmit_slots_are_disjoint_full_is_reported_and_reclaimed() {
    let mut s = device(16, 0, 0);
    s.handler = Some(park_tx);
    let mut n = net(&mut s);
    // 16 entries, two descriptors a frame: 8 frames in flight at most.
    for i in 0..8 {
        assert!(n.can_transmit().unwrap());
        n.transmit(&frame(100, i)).unwrap();
    }
    assert!(!n.can_transmit().unwrap());
    assert_eq!(
        n.transmit(&frame(100, 8)),
        Err(Error::QueueFull { needed: 1, free: 0 })
    );
    // The device completes them: each frame arrived intact (the slots do
    // not overlap), and the slots are free again.
    let io = n.transport().io_mut();
    io.handler = Some(net_handler);
    io.retry_parked();
    assert!(n.can_transmit().unwrap());
    n.transmit(&frame(100, 8)).unwrap();
    let io = n.transport().io_mut();
    assert_eq!(io.tx_packets.len(), 9);
    for (i, p) in (0u8..).zip(&io.tx_packets) {
        assert_eq!(p[HDR..], frame(100, i)[..], "frame {i}");
    }
    assert_eq!(n.stats().tx_frames, 9);
}

#[test]
fn merged_receive_buffers_make_one_frame_and_a_zero_count_is_dropped() {
    let mut s = device(16, bit(F_MRG_RXBUF) | bit(F_MTU), 9000);
    let mut n = net(&mut s);
    assert!(n.mrg_rxbuf());
    let big = frame(3000, 7);
    let first = SLOT_SIZE - HDR;
    let mut part1 = packet(&big[..first]);
    part1[10] = 2;
    let mut zero = packet(&frame(60, 1));
    zero[10] = 0;
    // Five buffers, 2036 + 4 x 2048 bytes: longer than the MTU allows.
    let long = frame(first + 4 * SLOT_SIZE, 3);
    let mut over = packet(&long[..first]);
    over[10] = 5;
    let io = n.transport().io_mut();
    io.rx_packets.extend([part1, big[first..].to_vec(), over]);
    io.rx_packets
        .extend(long[first..].chunks(SLOT_SIZE).map(<[u8]>::to_vec));
    io.rx_packets.extend([zero, packet(&frame(60, 2))]);
    io.retry_parked();
    let got = n.receive(<[u8]>::to_vec).unwrap();
    assert!(got == Some(big), "the 3000-byte frame, in two buffers");
    // The too long frame and `num_buffers` 0 are malformed: dropped and
    // counted.
    assert_eq!(n.receive(<[u8]>::to_vec).unwrap(), Some(frame(60, 2)));
    assert_eq!(n.stats().rx_errors, 2);
    assert_eq!(n.stats().rx_frames, 2);
}

#[test]
fn merged_frame_whose_first_buffer_holds_only_the_header() {
    let mut s = device(16, bit(F_MRG_RXBUF), 0);
    let mut n = net(&mut s);
    let mut head = packet(&[]);
    head[10] = 2;
    let io = n.transport().io_mut();
    io.rx_packets.extend([head, frame(60, 4)]);
    io.retry_parked();
    assert_eq!(n.receive(<[u8]>::to_vec).unwrap(), Some(frame(60, 4)));
    assert_eq!(n.stats().rx_errors, 0);
}
