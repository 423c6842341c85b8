//! Our network driver against QEMU's `virtio-net-device` on a
//! `-netdev stream` link whose other end this test holds (a Unix socket it
//! listens on; QEMU connects with `server=off`). Frames our driver
//! transmits arrive intact on the socket, frames written to the socket
//! arrive at our driver, MAC and link status come from QEMU's config
//! space. Legacy and modern windows.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use common::{both_modes, wait_until, Xorshift};
use vmmio_driver::net::Net;
use vmmio_qtest::{Device, Mode, QemuBuilder};
use vmmio_spec::features::{VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC};
use vmmio_spec::net::{F_CTRL_VQ, F_GUEST_CSUM, F_MAC, F_MRG_RXBUF, F_STATUS};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// Reads one length-prefixed frame from the stream (blocking, with the
/// socket's read timeout).
fn read_frame(sock: &mut UnixStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    sock.read_exact(&mut len).expect("frame length from QEMU");
    let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
    sock.read_exact(&mut f).expect("frame from QEMU");
    f
}

fn write_frame(sock: &mut UnixStream, f: &[u8]) {
    sock.write_all(&(f.len() as u32).to_be_bytes()).unwrap();
    sock.write_all(f).unwrap();
}

/// An Ethernet frame of `len` bytes to `dst` with random payload.
fn frame(rng: &mut Xorshift, dst: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    rng.fill(&mut f);
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 9]);
    // An EtherType no stack on the way cares about (local experimental).
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

fn frames_cross_a_stream_link(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let qemu = QemuBuilder::new(mode)
        .device(Device::Net {
            socket: path.clone(),
            mac: MAC,
        })
        .start()
        .unwrap_or_else(|e| panic!("QEMU did not start: {e}"));
    // QEMU connected while starting.
    listener.set_nonblocking(true).unwrap();
    let mut peer = None;
    assert!(
        wait_until(|| {
            peer = listener.accept().ok().map(|(s, _)| s);
            peer.is_some()
        }),
        "{mode:?}: QEMU never connected; {}",
        qemu.stderr()
    );
    let mut peer = peer.unwrap();
    peer.set_nonblocking(false).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();

    let mut net = Net::new(qemu.transport(0), qemu.hal())
        .unwrap_or_else(|e| panic!("{mode:?}: net init failed: {e}; {}", qemu.stderr()));
    assert_eq!(net.mac(), MAC, "{mode:?}: MAC from QEMU's config space");
    assert!(net.link_up(), "{mode:?}: link status from QEMU");
    let t = net.transport();
    for (bit, name) in [
        (F_MAC, "MAC"),
        (F_STATUS, "STATUS"),
        (F_MRG_RXBUF, "MRG_RXBUF"),
    ] {
        assert!(t.has_feature(bit), "{mode:?}: {name} negotiated");
    }
    // Offered by QEMU, declined by this driver.
    assert!(!t.has_feature(F_CTRL_VQ) && !t.has_feature(F_GUEST_CSUM));
    assert!(t.has_feature(VIRTIO_F_EVENT_IDX) && t.has_feature(VIRTIO_F_INDIRECT_DESC));

    let mut rng = Xorshift::new(0x6e65_7431);
    // Transmit: sizes from the minimum to a full 1500-byte-MTU frame, and
    // more frames than the ring holds.
    for i in 0..600usize {
        let len = [60, 1514, 64 + i % 1400][i % 3];
        let f = frame(&mut rng, [0xff; 6], len);
        // A full ring: QEMU frees buffers once its main loop runs, which
        // the next qtest access gives it.
        let mut sent = false;
        assert!(wait_until(|| {
            sent = net.transmit(&f).is_ok();
            sent
        }));
        let got = read_frame(&mut peer);
        assert!(got == f, "{mode:?}: frame {i} ({len} bytes) differs");
    }

    // Receive: QEMU delivers what the peer writes into our buffers.
    for i in 0..600usize {
        let len = [60, 1514, 64 + (i * 7) % 1400][i % 3];
        let f = frame(&mut rng, MAC, len);
        write_frame(&mut peer, &f);
        let mut got = None;
        assert!(
            wait_until(|| {
                got = net.receive(|r| r.to_vec()).unwrap();
                got.is_some()
            }),
            "{mode:?}: frame {i} never arrived; {}",
            qemu.stderr()
        );
        assert!(
            got.as_deref() == Some(&f[..]),
            "{mode:?}: frame {i} differs"
        );
    }
    assert_eq!(net.stats().rx_errors, 0);
}

both_modes!(frames_cross_a_stream_link);
