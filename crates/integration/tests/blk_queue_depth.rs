//! Queue depth > 1 end to end: the driver's `VirtQueue` posts two block
//! requests with one notification, and the block device's io_uring engine
//! keeps both in flight: the second completes while the first still waits
//! (each execution mode). A device (or driver) that served one request at
//! a time could not complete the second first.
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
