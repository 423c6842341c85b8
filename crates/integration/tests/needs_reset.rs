//! Driver resilience: a device that breaks on purpose (sets
//! DEVICE_NEEDS_RESET instead of answering a notification, virtio v1.4
//! §2.1.2) in front of each real device. Every class driver recovers the
//! same way (the driver crate's docs, "Recovery after DEVICE_NEEDS_RESET"):
//! the call that sees the bit fails with `Error::DeviceNeedsReset`, later
//! calls with `Error::Broken` (no reuse of a ring the device may still
//! touch), and after `reinit` (reset, renegotiate, new queues) the work
//! posted again completes. Both register layouts, both execution modes.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmmio_device::{
    ActivateError, BackendFd, ExecMode, InterruptStatus, Queue, TransportVersion, VirtioDevice,
};
use vmmio_driver::blk::Block;
use vmmio_driver::{Error, Transport};
use vmmio_integration::{window_in, Loopback, Mem};
use vmmio_spec::notification::NotificationData;

/// Passes everything to `inner`, except that the notification that brings
/// `countdown` to 0 is swallowed and answered with DEVICE_NEEDS_RESET
/// (0: never), and that a device [`Arm::now`] broke serves nothing more
/// (notifications and host events swallowed) until it is reset.
struct Breaking {
    inner: Box<dyn VirtioDevice<Mem> + Send>,
    countdown: Arc<AtomicU32>,
    /// The running device's interrupt status, shared with [`Arm`].
    interrupt: Arc<Mutex<Option<InterruptStatus>>>,
    broken: Arc<AtomicBool>,
}

impl VirtioDevice<Mem> for Breaking {
    fn device_type(&self) -> u32 {
        self.inner.device_type()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        self.inner.queue_max_sizes()
    }
    fn device_features(&self) -> u64 {
        self.inner.device_features()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.inner.read_config(offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.inner.write_config(offset, data);
    }
    fn config_generation(&self) -> u32 {
        self.inner.config_generation()
    }
    fn activate(
        &mut self,
        mem: Mem,
        interrupt: InterruptStatus,
        queues: Vec<Queue>,
        features: u64,
    ) -> Result<(), ActivateError> {
        *self.interrupt.lock().unwrap() = Some(interrupt.clone());
        self.inner.activate(mem, interrupt, queues, features)
    }
    fn queue_notify(&mut self, index: u16, data: Option<NotificationData>) {
        if self.broken.load(Ordering::SeqCst) {
            return;
        }
        let left = self.countdown.load(Ordering::SeqCst);
        if left == 1 {
            self.countdown.store(0, Ordering::SeqCst);
            if let Some(i) = &*self.interrupt.lock().unwrap() {
                i.device_needs_reset();
            }
            return;
        }
        if left > 1 {
            self.countdown.store(left - 1, Ordering::SeqCst);
        }
        self.inner.queue_notify(index, data);
    }
    fn reset(&mut self) {
        *self.interrupt.lock().unwrap() = None;
        self.broken.store(false, Ordering::SeqCst);
        self.inner.reset();
    }
    fn queue_reset(&mut self, index: u16) {
        self.inner.queue_reset(index);
    }
    fn queue_enable(&mut self, index: u16, queue: Queue) {
        self.inner.queue_enable(index, queue);
    }
    fn backend_fds(&self) -> Vec<BackendFd> {
        self.inner.backend_fds()
    }
    fn backend_event(&mut self, token: u64) {
        if !self.broken.load(Ordering::SeqCst) {
            self.inner.backend_event(token);
        }
    }
}

/// Breaks a [`Breaking`] device from the test's thread.
struct Arm {
    interrupt: Arc<Mutex<Option<InterruptStatus>>>,
    broken: Arc<AtomicBool>,
}

impl Arm {
    /// The device sets DEVICE_NEEDS_RESET (with its configuration change
    /// notification) now and serves nothing more until reset. A request
    /// the device already took may still complete (worker mode: it may be
    /// serving the ring this very moment).
    fn now(&self) {
        self.broken.store(true, Ordering::SeqCst);
        let interrupt = self.interrupt.lock().unwrap();
        interrupt
            .as_ref()
            .expect("a running device")
            .device_needs_reset();
    }
}

/// `inner` behind [`Breaking`], not armed.
fn breaking(inner: Box<dyn VirtioDevice<Mem> + Send>) -> (Box<Breaking>, Arm) {
    let arm = Arm {
        interrupt: Arc::new(Mutex::new(None)),
        broken: Arc::new(AtomicBool::new(false)),
    };
    let device = Box::new(Breaking {
        inner,
        countdown: Arc::new(AtomicU32::new(0)),
        interrupt: arm.interrupt.clone(),
        broken: arm.broken.clone(),
    });
    (device, arm)
}

/// The first error of `op` called up to 3 times (a request the device had
/// already taken when it broke may still succeed).
fn first_error<T>(mut op: impl FnMut() -> Result<T, Error>) -> Option<Error> {
    (0..3).find_map(|_| op().err())
}

fn configs() -> Vec<(ExecMode, TransportVersion, String)> {
    let mut v = Vec::new();
    for exec in [ExecMode::Sync, ExecMode::Worker] {
        for version in [TransportVersion::Legacy, TransportVersion::Modern] {
            v.push((exec, version, format!("{exec:?} {version:?}")));
        }
    }
    v
}

/// Runs the device's host side once (sync mode; the worker runs its own).
fn poll_backends(io: &mut Loopback) {
    io.transport
        .poll_backends(Duration::from_millis(1))
        .expect("poll_backends");
}

/// Calls `step` until it returns `Some`; panics after 10 s.
fn until<T>(what: &str, mut step: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(t) = step() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

#[test]
fn block_driver_recovers_from_device_needs_reset() {
    for exec in [ExecMode::Sync, ExecMode::Worker] {
        for version in [TransportVersion::Legacy, TransportVersion::Modern] {
            let what = format!("{exec:?} {version:?}");
            let mut file = tempfile::NamedTempFile::new().expect("temp file");
            let image: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
            file.write_all(&image).expect("image");
            file.flush().expect("flush");
            let disk =
                vmmio_devices::Block::<Mem, _>::from_path(file.path(), false).expect("block");
            // The third notification breaks the device.
            let countdown = Arc::new(AtomicU32::new(3));
            let device = Breaking {
                inner: Box::new(disk),
                countdown: countdown.clone(),
                interrupt: Arc::new(Mutex::new(None)),
                broken: Arc::new(AtomicBool::new(false)),
            };
            let w = window_in(exec, version, Box::new(device));
            let t = Transport::probe(w.io).expect("probe").expect("a device");
            let mut b = Block::new(t, w.hal).expect("driver");

            let mut buf = vec![0u8; 4096];
            b.read_blocks(0, &mut buf).expect("first read");
            assert_eq!(buf, image[..4096], "{what}");
            b.read_blocks(8, &mut buf).expect("second read");
            // Third: the device breaks instead of answering.
            assert_eq!(
                b.read_blocks(16, &mut buf),
                Err(Error::DeviceNeedsReset),
                "{what}"
            );
            // No reuse of a ring the device may still hold.
            assert_eq!(b.read_blocks(16, &mut buf), Err(Error::Broken), "{what}");
            // Recovery: reset and initialise again, then post the failed
            // request again.
            b.reinit().expect("reinit");
            b.read_blocks(16, &mut buf)
                .expect("the request posted again");
            assert_eq!(buf, image[16 * 512..16 * 512 + 4096], "{what}");
            assert_eq!(countdown.load(Ordering::SeqCst), 0);
        }
    }
}

#[test]
fn entropy_driver_recovers_from_device_needs_reset() {
    for (exec, version, what) in configs() {
        let (device, arm) = breaking(Box::new(vmmio_devices::Rng::<Mem>::new()));
        let w = window_in(exec, version, device);
        let t = Transport::probe(w.io).expect("probe").expect("a device");
        let mut e = vmmio_driver::rng::Entropy::new(t, w.hal).expect("driver");
        let mut buf = [0u8; 64];
        assert!(e.read(&mut buf).expect("a read") > 0, "{what}");
        arm.now();
        assert_eq!(
            first_error(|| e.read(&mut buf)),
            Some(Error::DeviceNeedsReset),
            "{what}"
        );
        assert_eq!(e.read(&mut buf), Err(Error::Broken), "{what}");
        e.reinit().expect("reinit");
        e.fill(&mut buf).expect("the request posted again");
        assert!(buf.iter().any(|&b| b != 0), "{what}");
    }
}

#[test]
fn console_driver_recovers_from_device_needs_reset() {
    for (exec, version, what) in configs() {
        let (console, out) = vmmio_devices::Console::<Mem>::capture();
        let input = console.input_handle();
        let (device, arm) = breaking(Box::new(console));
        let w = window_in(exec, version, device);
        let t = Transport::probe(w.io).expect("probe").expect("a device");
        let mut c = vmmio_driver::console::Console::new(t, w.hal).expect("driver");
        c.write(b"before ").expect("a write");
        arm.now();
        assert_eq!(
            first_error(|| c.write(b"lost ")),
            Some(Error::DeviceNeedsReset),
            "{what}"
        );
        assert_eq!(c.write(b"refused "), Err(Error::Broken), "{what}");
        let mut buf = [0u8; 16];
        assert_eq!(c.read(&mut buf), Err(Error::Broken), "{what}");
        c.reinit().expect("reinit");
        c.write(b"after").expect("the write posted again");
        let out = out.lock().unwrap().clone();
        assert!(
            out.starts_with(b"before ") && out.ends_with(b"after"),
            "{what}"
        );
        // Input reaches the new receive buffers.
        input.push(b"typed");
        let mut got = Vec::new();
        until("input after reinit", || {
            let n = c.read(&mut buf).expect("read");
            got.extend_from_slice(&buf[..n]);
            (got.len() >= 5).then_some(())
        });
        assert_eq!(got, b"typed", "{what}");
    }
}

/// A length-prefixed frame from the net device's stream peer.
fn read_frame(peer: &mut UnixStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    peer.read_exact(&mut len).expect("frame length");
    let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
    peer.read_exact(&mut frame).expect("frame");
    frame
}

fn frame(tag: u8) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x88, 0xb5]);
    f.extend(std::iter::repeat_n(tag, 50));
    f
}

#[test]
fn net_driver_recovers_from_device_needs_reset() {
    use vmmio_devices::net::{Net as NetDevice, Stream};
    for (exec, version, what) in configs() {
        let (ours, mut peer) = UnixStream::pair().expect("socket pair");
        peer.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let dev = NetDevice::<Mem>::new(Box::new(Stream::new(ours).expect("stream")));
        let (device, arm) = breaking(Box::new(dev));
        let w = window_in(exec, version, device);
        let t = Transport::probe(w.io).expect("probe").expect("a device");
        let mut net = vmmio_driver::net::Net::new(t, w.hal).expect("driver");
        net.transmit(&frame(1)).expect("a frame");
        poll_backends(net.transport().io_mut());
        assert_eq!(read_frame(&mut peer), frame(1), "{what}");

        // Transmit does not wait: the driver sees the bit in its interrupt
        // handler (or when the ring is full).
        arm.now();
        let mut tag = 2;
        let err = until("DEVICE_NEEDS_RESET to be seen", || {
            if let Err(e) = net.handle_interrupt() {
                return Some(e);
            }
            match net.transmit(&frame(tag)) {
                Ok(()) | Err(Error::QueueFull { .. }) => {}
                Err(e) => return Some(e),
            }
            tag = tag.wrapping_add(1);
            None
        });
        assert_eq!(err, Error::DeviceNeedsReset, "{what}");
        assert_eq!(net.transmit(&frame(0)), Err(Error::Broken), "{what}");
        assert_eq!(net.receive(|f| f.len()), Err(Error::Broken), "{what}");

        net.reinit().expect("reinit");
        // Both directions work again.
        net.transmit(&frame(0xaa)).expect("a frame after reinit");
        poll_backends(net.transport().io_mut());
        until("the frame after reinit", || {
            (read_frame(&mut peer) == frame(0xaa)).then_some(())
        });
        let reply = frame(0xbb);
        peer.write_all(&(reply.len() as u32).to_be_bytes())
            .and_then(|()| peer.write_all(&reply))
            .expect("reply");
        let got = until("the reply after reinit", || {
            poll_backends(net.transport().io_mut());
            net.receive(<[u8]>::to_vec).expect("receive")
        });
        assert_eq!(got, reply, "{what}");
    }
}

#[test]
fn vsock_driver_recovers_from_device_needs_reset() {
    use vmmio_driver::vsock::{ConnState, Vsock, HOST_CID};
    for (exec, version, what) in configs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("v.sock");
        let host = UnixListener::bind(format!("{}_1234", path.display())).expect("host port");
        let dev = vmmio_devices::vsock::Vsock::<Mem>::new(3, &path).expect("vsock device");
        let (device, arm) = breaking(Box::new(dev));
        let w = window_in(exec, version, device);
        let t = Transport::probe(w.io).expect("probe").expect("a device");
        let mut vs = Vsock::new(t, w.hal).expect("driver");
        let connect = |vs: &mut Vsock<_, _>| {
            let id = vs.connect(HOST_CID, 1234).expect("connect");
            until("the connection", || {
                vs.poll().expect("poll");
                poll_backends(vs.transport().io_mut());
                (vs.state(id) != Some(ConnState::Connecting)).then_some(())
            });
            assert_eq!(vs.state(id), Some(ConnState::Connected), "{what}");
            let (s, _) = host.accept().expect("host accept");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            (id, s)
        };
        let (id, mut s) = connect(&mut vs);
        assert_eq!(vs.send(id, b"ping"), Ok(4), "{what}");
        poll_backends(vs.transport().io_mut());
        let mut b = [0u8; 4];
        s.read_exact(&mut b).expect("ping");

        arm.now();
        let _ = vs.send(id, b"lost");
        // A poll that moves nothing while a connection is open reads
        // Status (no interrupt handler needed).
        let err = until("DEVICE_NEEDS_RESET to be seen", || vs.poll().err());
        assert_eq!(err, Error::DeviceNeedsReset, "{what}");
        assert_eq!(vs.send(id, b"refused"), Err(Error::Broken), "{what}");

        vs.reinit().expect("reinit");
        assert_eq!(vs.state(id), None, "{what}: connections are gone");
        assert_eq!(vs.send(id, b"x"), Err(Error::NoSuchConnection), "{what}");
        // The host program sees its connection end.
        until("the old host stream to end", || {
            poll_backends(vs.transport().io_mut());
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).ok().map(|_| ())
        });
        // A new connection carries data both ways.
        let (id, mut s) = connect(&mut vs);
        assert_eq!(vs.send(id, b"again"), Ok(5), "{what}");
        poll_backends(vs.transport().io_mut());
        let mut b = [0u8; 5];
        s.read_exact(&mut b).expect("again");
        assert_eq!(&b, b"again", "{what}");
        s.write_all(b"pong").expect("pong");
        let mut got = [0u8; 4];
        until("the reply after reinit", || {
            poll_backends(vs.transport().io_mut());
            (vs.recv(id, &mut got).expect("recv") == 4).then_some(())
        });
        assert_eq!(&got, b"pong", "{what}");
    }
}
