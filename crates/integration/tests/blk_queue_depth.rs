//! Queue depth > 1 end to end: the driver's `VirtQueue` posts two block
//! requests with one notification, and the block device's io_uring engine
//! keeps both in flight: the second completes while the first still waits
//! (each execution mode). A device (or driver) that served one request at
//! a time could not complete the second first.
//!
//! The same through the driver's `Block::submit_dma` / `complete`: a read
//! that waits on the disk and seven writes are in flight at once, the
//! writes complete first, each with its token.
//!
//! The disk is one end of a Unix socket pair (a read waits for the test to
//! send its bytes), a stand-in for a slow disk that makes the order
//! deterministic.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;
use vmmio_device::{ExecMode, TransportVersion};
use vmmio_devices::{Backend, Block, BlockOptions, IoEngine};
use vmmio_driver::blk::{Block as BlockDriver, DmaOp};
use vmmio_driver::{Dma, Segment, Transport, VirtQueue};
use vmmio_integration::{window_in, GuestHal, Loopback, Mem};
use vmmio_spec::blk::{features, status, types};
use vmmio_spec::features::bit;

/// Reads and writes only through the io_uring engine, on a socket.
struct SocketDisk {
    fd: RawFd,
}

impl Backend for SocketDisk {
    fn len(&self) -> u64 {
        1 << 20
    }
    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.fd)
    }
    fn read_at<B: BitmapSlice>(&mut self, _: u64, _: &VolatileSlice<'_, B>) -> std::io::Result<()> {
        Err(std::io::Error::other("served by io_uring only"))
    }
    fn write_at<B: BitmapSlice>(
        &mut self,
        _: u64,
        _: &VolatileSlice<'_, B>,
    ) -> std::io::Result<()> {
        Err(std::io::Error::other("served by io_uring only"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Pops the next used chain, waiting up to 10 s (a sync window delivers
/// the device's backend events at each `Status` read).
fn wait_used(t: &mut Transport<Loopback>, q: &mut VirtQueue<GuestHal>) -> Option<(u16, u32)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(u) = q.pop_used().expect("used ring") {
            return Some((u.token, u.len));
        }
        t.check_status().expect("status");
        std::thread::yield_now();
    }
    None
}

#[test]
fn two_requests_in_flight_complete_out_of_order() {
    for exec in [ExecMode::Sync, ExecMode::Worker] {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let dev = Block::<Mem, _>::with_backend(
            SocketDisk {
                fd: ours.as_raw_fd(),
            },
            BlockOptions {
                engine: IoEngine::IoUring,
                ..BlockOptions::default()
            },
        )
        .unwrap();
        let mut w = window_in(exec, TransportVersion::Modern, Box::new(dev));
        w.io.poll_backends = true;
        let hal = w.hal.clone();
        let mut t = Transport::probe(w.io).unwrap().unwrap();
        t.begin_init(bit(features::FLUSH)).unwrap();
        let mut q = t.setup_queue(hal.clone(), 0, 16).unwrap();
        t.finish_init().unwrap();

        // Page layout: headers at 0 and 32, status bytes at 2048 and 2049;
        // data: the read's 512 bytes, then the write's.
        let mut req = Dma::new(hal.clone(), 4096).unwrap();
        let mut data = Dma::new(hal, 1024).unwrap();
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&types::IN.to_le_bytes());
        req.write_bytes(0, &header).unwrap();
        header[..4].copy_from_slice(&types::OUT.to_le_bytes());
        req.write_bytes(32, &header).unwrap();
        req.write_bytes(2048, &[0xff, 0xff]).unwrap();
        data.write_bytes(512, &[0xa5; 512]).unwrap();
        let seg = |addr: u64, len: u32| Segment { addr, len };
        let (r, d) = (req.paddr(), data.paddr());
        // SAFETY: every segment lies in `req` or `data`, which live until
        // the end of the test, after both chains were used (or the test
        // failed and the device is dropped with them).
        let read =
            unsafe { q.add_segments(&[seg(r, 16)], &[seg(d, 512), seg(r + 2048, 1)]) }.unwrap();
        // SAFETY: as above.
        let write =
            unsafe { q.add_segments(&[seg(r + 32, 16), seg(d + 512, 512)], &[seg(r + 2049, 1)]) }
                .unwrap();
        t.notify(&mut q).unwrap();

        // The write completes; the read, first in the ring, still waits.
        assert_eq!(
            wait_used(&mut t, &mut q),
            Some((write, 1)),
            "{exec}: the second request did not complete while the first was in flight"
        );
        let mut sent = [0u8; 512];
        peer.read_exact(&mut sent).unwrap();
        assert_eq!(sent, [0xa5; 512]);
        let mut st = [0u8; 2];
        req.read_bytes(2048, &mut st).unwrap();
        assert_eq!(st, [0xff, status::OK], "{exec}");

        peer.write_all(&[0x5a; 512]).unwrap();
        assert_eq!(wait_used(&mut t, &mut q), Some((read, 513)), "{exec}");
        req.read_bytes(2048, &mut st).unwrap();
        assert_eq!(st, [status::OK, status::OK], "{exec}");
        let mut got = [0u8; 512];
        data.read_bytes(0, &mut got).unwrap();
        assert_eq!(got, [0x5a; 512], "{exec}");
        t.reset().unwrap();
        t.teardown_queue(q).unwrap();
    }
}

/// A block device over a socket disk with the io_uring engine, behind a
/// window run as `exec` says; returns the driver, its DMA services, the
/// disk's end (kept open) and its peer end.
type SocketBlock = (
    BlockDriver<Loopback, GuestHal>,
    GuestHal,
    UnixStream,
    UnixStream,
);
fn socket_block(exec: ExecMode) -> SocketBlock {
    let (ours, peer) = UnixStream::pair().unwrap();
    let dev = Block::<Mem, _>::with_backend(
        SocketDisk {
            fd: ours.as_raw_fd(),
        },
        BlockOptions {
            engine: IoEngine::IoUring,
            ..BlockOptions::default()
        },
    )
    .unwrap();
    let mut w = window_in(exec, TransportVersion::Modern, Box::new(dev));
    w.io.poll_backends = true;
    let t = Transport::probe(w.io).unwrap().unwrap();
    (
        BlockDriver::new(t, w.hal.clone()).unwrap(),
        w.hal,
        ours,
        peer,
    )
}

#[test]
fn block_driver_keeps_eight_requests_in_flight() {
    for exec in [ExecMode::Sync, ExecMode::Worker] {
        let (mut b, hal, _ours, mut peer) = socket_block(exec);
        let read_buf = Dma::new(hal.clone(), 512).unwrap();
        let read = b.submit_dma(DmaOp::Read, 0, read_buf, 512).unwrap();
        // All at sector 0: a socket has no offsets (any other is an
        // IOERR); the bytes tell the requests apart.
        let mut sent = Vec::new();
        let mut writes = Vec::new();
        for i in 0..7u8 {
            let mut d = Dma::new(hal.clone(), 512).unwrap();
            d.write_bytes(0, &[0x10 + i; 512]).unwrap();
            sent.push([0x10 + i; 512]);
            let tok = b
                .submit_dma(DmaOp::Write, 0, d, 512)
                .unwrap_or_else(|r| panic!("{exec}: request {} refused: {:?}", i + 2, r.error));
            writes.push(tok);
        }
        assert_eq!(b.queued(), 8, "{exec}");

        // The seven writes complete while the read, first in the ring,
        // still waits for the disk.
        let mut done = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while done.len() < 7 && Instant::now() < deadline {
            match b.complete().expect("complete") {
                Some(c) => {
                    c.result.expect("write status");
                    done.push(c.token);
                }
                None => std::thread::yield_now(),
            }
        }
        done.sort();
        writes.sort();
        assert_eq!(
            done, writes,
            "{exec}: the writes did not all complete before the read"
        );
        let mut got = vec![0u8; 7 * 512];
        peer.read_exact(&mut got).unwrap();
        let mut chunks: Vec<&[u8]> = got.chunks(512).collect();
        chunks.sort();
        let want: Vec<&[u8]> = sent.iter().map(|c| &c[..]).collect();
        assert_eq!(chunks, want, "{exec}");

        peer.write_all(&[0x5a; 512]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let c = loop {
            if let Some(c) = b.complete().expect("complete") {
                break c;
            }
            assert!(
                Instant::now() < deadline,
                "{exec}: the read never completed"
            );
            std::thread::yield_now();
        };
        assert_eq!(c.token, read, "{exec}");
        c.result.expect("read status");
        let mut data = [0u8; 512];
        c.buf
            .expect("the read buffer")
            .read_bytes(0, &mut data)
            .unwrap();
        assert_eq!(data, [0x5a; 512], "{exec}");
        assert_eq!(b.queued(), 0);
    }
}
