//! The io_uring engine: requests stay in flight across notifications and
//! complete out of order, FLUSH waits for the writes before it, the number
//! in flight is bounded, kernel errors become IOERR, and a reset cancels or
//! waits for every SQE before it returns (§2.4).
//!
//! A Unix stream socket stands in for a slow disk where a test needs a
//! request that does not complete until the test says so: a read of it
//! waits for the peer to send, a write waits while its send buffer is full.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use super::*;

/// A backend whose only I/O path is the io_uring engine on `fd`.
struct FdBackend {
    fd: RawFd,
    len: u64,
}

impl Backend for FdBackend {
    fn len(&self) -> u64 {
        self.len
    }
    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.fd)
    }
    fn read_at<B: BitmapSlice>(&mut self, _: u64, _: &VolatileSlice<'_, B>) -> io::Result<()> {
        Err(io::Error::other(
            "synchronous read on the io_uring test backend",
        ))
    }
    fn write_at<B: BitmapSlice>(&mut self, _: u64, _: &VolatileSlice<'_, B>) -> io::Result<()> {
        Err(io::Error::other(
            "synchronous write on the io_uring test backend",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Err(io::Error::other(
            "synchronous flush on the io_uring test backend",
        ))
    }
}

fn uring_options() -> BlockOptions {
    BlockOptions {
        engine: IoEngine::IoUring,
        ..BlockOptions::default()
    }
}

/// A device over one end of a socket pair (1 MiB "disk"); the other end.
fn socket_fixture() -> (Fx<FdBackend>, UnixStream, UnixStream) {
    socket_fixture_with(uring_options())
}

fn socket_fixture_with(options: BlockOptions) -> (Fx<FdBackend>, UnixStream, UnixStream) {
    let (ours, peer) = UnixStream::pair().unwrap();
    let backend = FdBackend {
        fd: ours.as_raw_fd(),
        len: 1 << 20,
    };
    let fx = fixture(backend, options, FEATURES);
    assert_eq!(fx.dev.engine(), IoEngine::IoUring);
    (fx, ours, peer)
}

impl<B: Backend> Fx<B> {
    /// Delivers backend events until `n` more chains are used (bounded
    /// wait: the kernel completes the I/O these tests start at once).
    fn wait_used(&mut self, n: usize) -> Vec<(u32, u32)> {
        let mut used = Vec::new();
        for _ in 0..1_000 {
            used.extend(self.ring.take_used(&self.mem));
            if used.len() >= n {
                return used;
            }
            let fds = self.dev.backend_fds();
            let mut p: Vec<libc::pollfd> = fds
                .iter()
                .map(|b| libc::pollfd {
                    fd: b.fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: `p` is a live array of its length.
            unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, 10) };
            for b in &fds {
                self.dev.backend_event(b.token);
            }
        }
        panic!("only {} of {n} chains used", used.len());
    }
}

impl<B: Backend> Fx<B> {
    /// Gives the kernel time to complete what it can (100 ms without a
    /// completion) and delivers the events. A test can only fail through
    /// this if the device completes something it must not; correct code
    /// passes however slow the machine.
    fn settle(&mut self) {
        loop {
            let fds = self.dev.backend_fds();
            let mut p: Vec<libc::pollfd> = fds
                .iter()
                .map(|b| libc::pollfd {
                    fd: b.fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: `p` is a live array of its length.
            let rc = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, 100) };
            if rc <= 0 {
                return;
            }
            for b in &fds {
                self.dev.backend_event(b.token);
            }
        }
    }
}

#[test]
fn file_reads_writes_and_flushes_go_through_the_ring() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&image(64)).unwrap();
    let backend = FileBackend::open(file.path(), false).unwrap();
    let mut fx = fixture(backend, uring_options(), FEATURES);
    assert_eq!(fx.dev.engine(), IoEngine::IoUring);

    let w = fx.submit(types::OUT, 3, &[0x5a; 1024], 0);
    fx.dev.queue_notify(0, None);
    let used = fx.wait_used(1);
    assert_eq!(used, vec![(u32::from(w.head), 1)]);
    assert_eq!(fx.status(w), status::OK);
    let f = fx.submit(types::FLUSH, 0, &[], 0);
    fx.dev.queue_notify(0, None);
    assert_eq!(fx.wait_used(1), vec![(u32::from(f.head), 1)]);
    assert_eq!(fx.status(f), status::OK);

    let r = fx.submit(types::IN, 2, &[], 2048);
    fx.dev.queue_notify(0, None);
    assert_eq!(fx.wait_used(1), vec![(u32::from(r.head), 2049)]);
    assert_eq!(fx.status(r), status::OK);
    let data = fx.data(r);
    assert!(data[..512].iter().all(|&b| b == 2));
    assert!(data[512..1536].iter().all(|&b| b == 0x5a));
    assert!(data[1536..].iter().all(|&b| b == 5));

    let mut on_disk = Vec::new();
    file.reopen().unwrap().read_to_end(&mut on_disk).unwrap();
    assert!(on_disk[3 * 512..5 * 512].iter().all(|&b| b == 0x5a));
    assert_eq!(fx.dev.in_flight(), 0);
    assert!(fx.dev.backend_fds().is_empty(), "nothing listed when idle");

    // Past the end: answered at once, synchronously, as before.
    let (_, st, len) = fx.run(types::IN, 64, &[], 512);
    assert_eq!((st, len), (status::IOERR, 1));
}

#[test]
fn a_slow_request_stays_in_flight_while_a_fast_one_completes_first() {
    let (mut fx, _ours, mut peer) = socket_fixture();
    let slow = fx.submit(types::IN, 0, &[], 512);
    fx.dev.queue_notify(0, None);
    let fast = fx.submit(types::OUT, 0, &[0xc3; 512], 0);
    fx.dev.queue_notify(0, None);
    // The write (second) completes, the read (first) is still in flight
    // across both notifications.
    assert_eq!(fx.wait_used(1), vec![(u32::from(fast.head), 1)]);
    assert_eq!(fx.status(fast), status::OK);
    assert_eq!(fx.dev.in_flight(), 1);
    assert_eq!(fx.status(slow), 0xff, "no status before completion");
    let mut sent = [0u8; 512];
    peer.read_exact(&mut sent).unwrap();
    assert_eq!(sent, [0xc3; 512]);

    peer.write_all(&[0x3c; 512]).unwrap();
    assert_eq!(fx.wait_used(1), vec![(u32::from(slow.head), 513)]);
    assert_eq!(fx.status(slow), status::OK);
    assert_eq!(fx.data(slow), vec![0x3c; 512]);
    assert_eq!(fx.dev.in_flight(), 0);
}

/// Fills `s`'s send buffer so that the next write to it waits.
fn fill_send_buffer(s: &UnixStream) -> usize {
    s.set_nonblocking(true).unwrap();
    let chunk = [0u8; 4096];
    let mut n = 0;
    loop {
        match (&*s).write(&chunk) {
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    s.set_nonblocking(false).unwrap();
    n
}

#[test]
fn flush_completes_only_after_the_writes_submitted_before_it() {
    let (mut fx, ours, mut peer) = socket_fixture();
    let queued = fill_send_buffer(&ours);
    let w = fx.submit(types::OUT, 0, &[0x11; 512], 0);
    let f = fx.submit(types::FLUSH, 0, &[], 0);
    fx.dev.queue_notify(0, None);
    // The flush alone would fail at once (fsync of a socket); drained
    // behind the pending write, it waits.
    fx.settle();
    assert!(
        fx.ring.take_used(&fx.mem).is_empty(),
        "flush overtook the write"
    );
    assert_eq!(fx.dev.in_flight(), 2);

    let mut sink = vec![0u8; queued + 512];
    peer.read_exact(&mut sink).unwrap();
    let used = fx.wait_used(2);
    let heads: Vec<u32> = used.iter().map(|u| u.0).collect();
    assert_eq!(heads, vec![u32::from(w.head), u32::from(f.head)]);
    assert_eq!(fx.status(w), status::OK);
    // fsync(2) of a socket is EINVAL: a kernel error answered IOERR.
    assert_eq!(fx.status(f), status::IOERR);
}

#[test]
fn in_flight_requests_are_bounded_and_the_rest_wait_in_the_ring() {
    // QueueSizeMax 4: a 4-entry SQ, one entry kept for a cancel.
    let (mut fx, _ours, mut peer) = socket_fixture_with(BlockOptions {
        queue_size: 4,
        ..uring_options()
    });
    let reqs: Vec<Req> = (0..5).map(|_| fx.submit(types::IN, 0, &[], 512)).collect();
    fx.dev.queue_notify(0, None);
    assert_eq!(fx.dev.in_flight(), 3);
    fx.dev.queue_notify(0, None);
    assert_eq!(fx.dev.in_flight(), 3, "a notification does not add more");
    peer.write_all(&[7u8; 5 * 512]).unwrap();
    let used = fx.wait_used(5);
    assert_eq!(used.len(), 5);
    for r in reqs {
        assert_eq!(fx.status(r), status::OK, "{r:?} {used:?}");
    }
    assert_eq!(fx.dev.in_flight(), 0);
}

/// More chains than the engine takes, completed as fast as they are
/// submitted (page-cache reads): the device keeps popping without another
/// notification, even when nothing is left in flight to wake it.
#[test]
fn chains_beyond_the_engine_capacity_need_no_second_notification() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&image(64)).unwrap();
    let backend = FileBackend::open(file.path(), false).unwrap();
    let options = BlockOptions {
        queue_size: 4,
        ..uring_options()
    };
    let mut fx = fixture(backend, options, FEATURES);
    let reqs: Vec<Req> = (0..5u64)
        .map(|i| fx.submit(types::IN, i, &[], 512))
        .collect();
    fx.dev.queue_notify(0, None);
    assert_eq!(fx.wait_used(5).len(), 5);
    for (i, r) in reqs.into_iter().enumerate() {
        assert_eq!(fx.status(r), status::OK);
        assert_eq!(fx.data(r), vec![i as u8; 512]);
    }
}

#[test]
fn a_kernel_error_is_ioerr() {
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(4096).unwrap();
    // Write-only: every read fails with EBADF in the kernel.
    let wo = File::options().write(true).open(file.path()).unwrap();
    let backend = FdBackend {
        fd: wo.as_raw_fd(),
        len: 4096,
    };
    let mut fx = fixture(backend, uring_options(), FEATURES);
    let r = fx.submit(types::IN, 0, &[], 512);
    fx.dev.queue_notify(0, None);
    assert_eq!(fx.wait_used(1), vec![(u32::from(r.head), 1)]);
    assert_eq!(fx.status(r), status::IOERR);
}

#[test]
fn reset_cancels_in_flight_requests_and_the_kernel_writes_nothing_after() {
    let (mut fx, ours, mut peer) = socket_fixture();
    let r = fx.submit(types::IN, 0, &[], 512);
    fx.dev.queue_notify(0, None);
    fx.settle();
    assert_eq!(fx.dev.in_flight(), 1);
    fx.dev.reset();
    // The data the read waited for arrives after the reset: it must stay
    // in the socket, not land in guest memory.
    peer.write_all(&[0xee; 512]).unwrap();
    ours.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let mut got = [0u8; 512];
    let n = (&ours)
        .read(&mut got)
        .expect("the data stayed in the socket");
    assert_eq!(n, 512);
    assert_eq!(fx.status(r), 0xff, "status written after reset");
    assert!(
        fx.data(r).iter().all(|&b| b == 0),
        "guest memory written after reset"
    );
    assert!(fx.ring.take_used(&fx.mem).is_empty());
    assert_eq!(fx.dev.in_flight(), 0);
}

#[test]
fn queue_reset_waits_for_its_requests() {
    let (mut fx, ours, mut peer) = socket_fixture();
    let r = fx.submit(types::IN, 0, &[], 512);
    fx.dev.queue_notify(0, None);
    assert_eq!(fx.dev.in_flight(), 1);
    fx.dev.queue_reset(0);
    peer.write_all(&[0xee; 512]).unwrap();
    ours.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let mut got = [0u8; 512];
    assert_eq!((&ours).read(&mut got).unwrap(), 512);
    assert_eq!(fx.status(r), 0xff);
    assert!(fx.data(r).iter().all(|&b| b == 0));
    assert_eq!(fx.dev.in_flight(), 0);
}

#[test]
fn auto_picks_io_uring_for_a_file_and_sync_without_a_descriptor() {
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(4096).unwrap();
    let options = BlockOptions {
        engine: IoEngine::Auto,
        ..BlockOptions::default()
    };
    let dev: Block<Mem, _> = Block::from_path_with_options(file.path(), options.clone()).unwrap();
    assert_eq!(dev.engine(), IoEngine::IoUring);
    let dev: Block<Mem, _> = Block::with_backend(MemoryBackend::new(4096), options).unwrap();
    assert_eq!(dev.engine(), IoEngine::Sync);
    assert!(matches!(
        Block::<Mem, _>::with_backend(MemoryBackend::new(4096), uring_options()),
        Err(BlockError::IoUring(_))
    ));
}
