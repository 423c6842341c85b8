//! Console device tests.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmmio_device::VirtioDevice;

use super::*;
use crate::test_util::{desc, interrupt, mem, CountingLine, Mem, TestRing};

struct Fx {
    m: Mem,
    rx: TestRing,
    tx: TestRing,
    dev: Console<Mem>,
    line: Arc<CountingLine>,
}

fn activate(mut dev: Console<Mem>) -> Fx {
    let m = mem();
    let rx = TestRing::new(16, 0);
    let tx = TestRing::new(16, 1);
    let (irq, line) = interrupt();
    dev.activate(m.clone(), irq, vec![rx.queue(0), tx.queue(0)], 0)
        .unwrap();
    Fx {
        m,
        rx,
        tx,
        dev,
        line,
    }
}

fn captured(buf: &Mutex<Vec<u8>>) -> Vec<u8> {
    buf.lock().unwrap().clone()
}

#[test]
fn transmit_goes_to_the_output() {
    let (dev, out) = Console::capture();
    let mut fx = activate(dev);
    let a = fx.tx.alloc(6);
    fx.m.write_slice(b"hello ", GuestAddress(a)).unwrap();
    let b = fx.tx.alloc(5);
    fx.m.write_slice(b"world", GuestAddress(b)).unwrap();
    fx.tx
        .add_chain(&fx.m, &[desc(a, 6, false), desc(b, 5, false)]);
    fx.tx.add_chain(&fx.m, &[desc(a, 5, false)]);
    fx.dev.queue_notify(TRANSMITQ, None);
    assert_eq!(captured(&out), b"hello worldhello");
    // Used length 0: the device writes nothing into transmit buffers.
    assert_eq!(fx.tx.take_used(&fx.m), vec![(0, 0), (2, 0)]);
    assert_eq!(fx.line.used(), 1);
}

#[test]
fn input_waits_for_receive_buffers_then_is_delivered() {
    let (dev, _out) = Console::capture();
    dev.push_input(b"early ");
    let mut fx = activate(dev);
    // No receive buffer yet: nothing used.
    assert!(fx.rx.take_used(&fx.m).is_empty());
    let a = fx.rx.alloc(4);
    let b = fx.rx.alloc(64);
    fx.rx.add_chain(&fx.m, &[desc(a, 4, true)]);
    fx.rx.add_chain(&fx.m, &[desc(b, 64, true)]);
    fx.dev.queue_notify(RECEIVEQ, None);
    // "early " split over the two buffers.
    assert_eq!(fx.rx.take_used(&fx.m), vec![(0, 4), (1, 2)]);
    let mut got = [0u8; 6];
    fx.m.read_slice(&mut got[..4], GuestAddress(a)).unwrap();
    fx.m.read_slice(&mut got[4..], GuestAddress(b)).unwrap();
    assert_eq!(&got, b"early ");
    assert_eq!(fx.line.used(), 1);
    // Later input through a handle goes straight into a posted buffer.
    let c = fx.rx.alloc(64);
    fx.rx.add_chain(&fx.m, &[desc(c, 64, true)]);
    fx.dev.queue_notify(RECEIVEQ, None);
    assert!(fx.rx.take_used(&fx.m).is_empty(), "no input, buffer kept");
    assert!(fx.dev.input_handle().push(b"late"));
    assert_eq!(fx.rx.take_used(&fx.m), vec![(2, 4)]);
    let mut got = [0u8; 4];
    fx.m.read_slice(&mut got, GuestAddress(c)).unwrap();
    assert_eq!(&got, b"late");
    assert_eq!(fx.line.used(), 2);
}

#[test]
fn pending_input_is_bounded() {
    let (dev, _out) = Console::<Mem>::capture();
    dev.push_input(&vec![b'x'; MAX_PENDING_INPUT + 100]);
    dev.push_input(b"more");
    assert_eq!(lock(&dev.inner).pending.len(), 64 * 1024);
}

#[test]
fn readable_receive_buffer_is_malformed() {
    let (dev, _out) = Console::capture();
    dev.push_input(b"abc");
    let mut fx = activate(dev);
    let a = fx.rx.alloc(8);
    fx.rx
        .add_chain(&fx.m, &[desc(a, 4, false), desc(a + 4, 4, true)]);
    let b = fx.rx.alloc(8);
    fx.rx.add_chain(&fx.m, &[desc(b, 8, true)]);
    fx.dev.queue_notify(RECEIVEQ, None);
    // The malformed chain gets 0 and consumes nothing; the next gets it all.
    assert_eq!(fx.rx.take_used(&fx.m), vec![(0, 0), (2, 3)]);
    let mut got = [0u8; 3];
    fx.m.read_slice(&mut got, GuestAddress(b)).unwrap();
    assert_eq!(&got, b"abc");
}

#[test]
fn bad_buffers_do_not_crash() {
    let (dev, out) = Console::capture();
    dev.push_input(b"zz");
    let mut fx = activate(dev);
    fx.tx.add_chain(&fx.m, &[desc(0x4000_0000, 16, false)]);
    // Claims 4 GiB over 1 MiB of memory: capped, then fails, no panic.
    fx.tx.add_chain(&fx.m, &[desc(0, u32::MAX, false)]);
    fx.dev.queue_notify(TRANSMITQ, None);
    assert_eq!(fx.tx.take_used(&fx.m).len(), 2);
    assert!(captured(&out).len() as u64 <= MAX_TX_CHAIN_BYTES);
    fx.rx.add_chain(&fx.m, &[desc(0x4000_0000, 16, true)]);
    fx.dev.queue_notify(RECEIVEQ, None);
    assert_eq!(fx.rx.take_used(&fx.m), vec![(0, 0)]);
    // Descriptor loop on the transmit queue: no panic, queue dropped.
    fx.tx
        .write_desc(&fx.m, 5, 0x2_0000, 4, crate::test_util::F_NEXT, 5);
    fx.tx.publish(&fx.m, 5);
    fx.dev.queue_notify(TRANSMITQ, None);
    assert!(fx.tx.take_used(&fx.m).is_empty());
}

/// virtio v1.4 §5.3.5.1: a write to `emerg_wr` is allowed even on an
/// unconfigured device, and its low byte is output.
#[test]
fn emergency_write_works_before_configuration() {
    let (mut dev, out) = Console::<Mem>::capture();
    assert_ne!(dev.device_features() & bit(F_EMERG_WRITE), 0);
    dev.write_config(EMERG_WR_OFFSET, &u32::from(b'A').to_le_bytes());
    dev.write_config(EMERG_WR_OFFSET, b"B");
    // Upper bytes of emerg_wr and other fields output nothing.
    dev.write_config(EMERG_WR_OFFSET + 1, b"C");
    dev.write_config(0, &[1, 2, 3, 4]);
    // A wide write covering emerg_wr outputs the byte at its offset.
    dev.write_config(4, &[0, 0, 0, 0, b'D', 0, 0, 0]);
    dev.write_config(u64::MAX, b"E");
    assert_eq!(captured(&out), b"ABD");
    // And while running.
    let mut fx = activate(dev);
    fx.dev.write_config(EMERG_WR_OFFSET, b"F");
    assert_eq!(captured(&out), b"ABDF");
}

/// virtio v1.4 §5.3.6.2: MULTIPORT is not offered, so no control messages
/// are ever sent (the multiport device requirements hold vacuously); only
/// the two port-0 queues exist.
#[test]
fn multiport_not_offered() {
    let (dev, _out) = Console::<Mem>::capture();
    assert_eq!(dev.device_features() & bit(F_MULTIPORT), 0);
    assert_eq!(dev.queue_max_sizes().len(), 2);
    assert_eq!(dev.device_type(), vmmio_spec::device_id::CONSOLE);
}

#[test]
fn config_has_size_and_resize_notifies() {
    let (dev, _out) = Console::<Mem>::capture();
    let dev = dev.with_size(132, 43);
    assert_ne!(dev.device_features() & bit(F_SIZE), 0);
    let mut c = [0xffu8; 16];
    dev.read_config(0, &mut c);
    assert_eq!(&c[0..4], &[132, 0, 43, 0]);
    assert_eq!(&c[4..8], &1u32.to_le_bytes());
    assert_eq!(&c[8..], &[0; 8], "emerg_wr and past the end read 0");
    let fx = activate(dev);
    fx.dev.set_size(100, 30);
    assert_eq!(fx.line.config(), 1);
    let mut c = [0u8; 4];
    fx.dev.read_config(0, &mut c);
    assert_eq!(c, [100, 0, 30, 0]);
    // The handle reads back what the config space holds.
    let handle = fx.dev.config_handle();
    assert_eq!(handle.size(), (100, 30));
    handle.set_size(7, 300);
    assert_eq!(handle.size(), (7, 300));
    assert_eq!(fx.line.config(), 2);
}

#[test]
fn reset_keeps_pending_input_and_stops_queues() {
    let (dev, out) = Console::capture();
    let mut fx = activate(dev);
    fx.dev.reset();
    let a = fx.tx.alloc(2);
    fx.m.write_slice(b"hi", GuestAddress(a)).unwrap();
    fx.tx.add_chain(&fx.m, &[desc(a, 2, false)]);
    fx.dev.queue_notify(TRANSMITQ, None);
    assert!(captured(&out).is_empty());
    fx.dev.push_input(b"kept");
    assert_eq!(lock(&fx.dev.inner).pending.len(), 4);
}

#[test]
fn unix_socket_carries_both_directions() {
    let (host, dev_end) = UnixStream::pair().unwrap();
    let dev = Console::unix_stream(dev_end).unwrap();
    let mut fx = activate(dev);
    // Guest to host.
    let a = fx.tx.alloc(4);
    fx.m.write_slice(b"ping", GuestAddress(a)).unwrap();
    fx.tx.add_chain(&fx.m, &[desc(a, 4, false)]);
    fx.dev.queue_notify(TRANSMITQ, None);
    let mut got = [0u8; 4];
    (&host).read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    // Host to guest, through the reader thread.
    let b = fx.rx.alloc(16);
    fx.rx.add_chain(&fx.m, &[desc(b, 16, true)]);
    fx.dev.queue_notify(RECEIVEQ, None);
    std::io::Write::write_all(&mut &host, b"pong").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let used = loop {
        let used = fx.rx.take_used(&fx.m);
        if !used.is_empty() || Instant::now() > deadline {
            break used;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(used, vec![(0, 4)]);
    let mut got = [0u8; 4];
    fx.m.read_slice(&mut got, GuestAddress(b)).unwrap();
    assert_eq!(&got, b"pong");
}

/// `Console::capture` is bounded: a guest that transmits without end cannot
/// make the host buffer grow past the limit; the latest bytes stay.
#[test]
fn capture_keeps_at_most_its_limit_and_the_latest_bytes() {
    use std::io::Write as _;
    const LIMIT: usize = 1000;
    let buf = Arc::new(Mutex::new(Vec::new()));
    let mut sink = super::Capture {
        buf: buf.clone(),
        limit: LIMIT,
    };
    let mut peak = 0;
    for i in 0..10_000u32 {
        let chunk = [(i % 251) as u8; 7];
        sink.write_all(&chunk).unwrap();
        peak = peak.max(buf.lock().unwrap().len());
    }
    assert!(peak <= LIMIT, "peak {peak}");
    let kept = buf.lock().unwrap().clone();
    assert!(kept.len() >= LIMIT / 2);
    assert_eq!(kept[kept.len() - 7..], [(9_999 % 251) as u8; 7]);
    // One write larger than the limit keeps its tail.
    let big: Vec<u8> = (0..3 * LIMIT).map(|i| i as u8).collect();
    sink.write_all(&big).unwrap();
    assert_eq!(buf.lock().unwrap()[..], big[2 * LIMIT..]);
    // Through the device API too.
    let (_dev, out) = Console::<Mem>::capture_with_limit(0);
    assert!(out.lock().unwrap().is_empty());
}

/// A sink whose writes block until the gate opens, then record.
struct Gate {
    open: Arc<(Mutex<bool>, std::sync::Condvar)>,
    out: Arc<Mutex<Vec<u8>>>,
}

impl std::io::Write for Gate {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let (lock, cond) = &*self.open;
        let mut open = lock.lock().unwrap();
        while !*open {
            open = cond.wait(open).unwrap();
        }
        self.out.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A host output that blocks (a pipe nobody drains) never blocks the
/// device: transmit stops at the bounded buffer (the rest waits in the
/// ring), config accesses, input and reset return; once the sink moves
/// again the device is woken through its fd and every byte arrives, in
/// order.
#[test]
fn a_blocked_output_never_blocks_the_device() {
    const CHAIN: u32 = 256 * 1024;
    const CHAINS: usize = 16;
    let open = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let out = Arc::new(Mutex::new(Vec::new()));
    let dev = Console::new(Box::new(Gate {
        open: open.clone(),
        out: out.clone(),
    }));
    let pattern: Vec<u8> = (0..CHAIN).map(|i| (i % 251) as u8).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    let data = pattern.clone();
    let device = std::thread::spawn(move || {
        let mut fx = activate(dev);
        let a = fx.tx.alloc(u64::from(CHAIN));
        fx.m.write_slice(&data, GuestAddress(a)).unwrap();
        for _ in 0..CHAINS {
            fx.tx.add_chain(&fx.m, &[desc(a, CHAIN, false)]);
        }
        fx.dev.queue_notify(TRANSMITQ, None);
        let mut used = fx.tx.take_used(&fx.m).len();
        let mut b = [0u8; 4];
        fx.dev.read_config(0, &mut b);
        fx.dev.write_config(EMERG_WR_OFFSET, b"!");
        fx.dev.push_input(b"typed");
        let waiting = fx.dev.backend_fds().len();
        tx.send((used, waiting)).unwrap();
        // The sink moves again: the device's fd wakes it until all is out.
        while used < CHAINS {
            assert!(
                crate::test_util::wait_backends(&mut fx.dev, 10_000) > 0,
                "the device was not woken when the output had room again"
            );
            used += fx.tx.take_used(&fx.m).len();
        }
        fx.dev.reset();
        drop(fx);
    });
    let returned = rx.recv_timeout(Duration::from_secs(20));
    // Open the gate whatever happened, so the device thread can end.
    *open.0.lock().unwrap() = true;
    open.1.notify_all();
    let (used, waiting) = returned.expect("device calls did not return while the output blocked");
    assert!(
        used < CHAINS && used * CHAIN as usize <= OUTPUT_BUFFER + 64 * 1024,
        "{used} chains taken with the sink blocked"
    );
    assert_eq!(waiting, 1, "the device waits for room on its fd");
    device.join().unwrap();
    // Dropping the console drained the buffer (DRAIN_ON_DROP).
    let out = out.lock().unwrap();
    let first = used * CHAIN as usize;
    assert_eq!(out.len(), CHAINS * CHAIN as usize + 1);
    for (i, chunk) in out[..first].chunks(CHAIN as usize).enumerate() {
        assert!(chunk == pattern.as_slice(), "chain {i} out of order");
    }
    assert_eq!(
        out[first], b'!',
        "the emergency write after the buffered chains"
    );
    for (i, chunk) in out[first + 1..].chunks(CHAIN as usize).enumerate() {
        assert!(chunk == pattern.as_slice(), "late chain {i} out of order");
    }
}

/// A sink that keeps up gets the bytes before the notification returns
/// (the device waits for its writer, at most `OUTPUT_WAIT`): guest output
/// keeps its order against other host output on the same stream.
#[test]
fn output_that_keeps_up_is_written_before_the_notification_returns() {
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Shared {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            // A slow sink, still well within OUTPUT_WAIT.
            std::thread::sleep(Duration::from_millis(5));
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut fx = activate(Console::new(Box::new(Shared(out.clone()))));
    let a = fx.tx.alloc(5);
    fx.m.write_slice(b"first", GuestAddress(a)).unwrap();
    fx.tx.add_chain(&fx.m, &[desc(a, 5, false)]);
    fx.dev.queue_notify(TRANSMITQ, None);
    assert_eq!(captured(&out), b"first");
    fx.dev.write_config(EMERG_WR_OFFSET, b"!");
    assert_eq!(captured(&out), b"first!");
}

/// A reader playing a script of results; tells `done` when dropped (the
/// reader thread dropped it: it has stopped).
struct Script {
    steps: std::collections::VecDeque<io::Result<Vec<u8>>>,
    done: std::sync::mpsc::Sender<()>,
}

impl Read for Script {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.steps.pop_front() {
            None => Ok(0),
            Some(Ok(b)) => {
                buf[..b.len()].copy_from_slice(&b);
                Ok(b.len())
            }
            Some(Err(e)) => Err(e),
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.done.send(());
    }
}

/// The pending input once the reader thread has stopped.
fn read_through(steps: Vec<io::Result<Vec<u8>>>) -> Vec<u8> {
    let (dev, _out) = Console::<Mem>::capture();
    let (done, stopped) = std::sync::mpsc::channel();
    let script = Script {
        steps: steps.into(),
        done,
    };
    dev.spawn_reader("test-reader", script).unwrap();
    stopped
        .recv_timeout(Duration::from_secs(60))
        .expect("the reader thread stops");
    let pending: Vec<u8> = lock(&dev.inner).pending.iter().copied().collect();
    pending
}

#[test]
fn reader_thread_reads_to_the_end_retries_eintr_and_stops_on_errors() {
    let interrupted = || Err(io::Error::from(io::ErrorKind::Interrupted));
    let failed = || Err(io::Error::other("gone"));
    assert_eq!(
        read_through(vec![Ok(b"ab".to_vec()), interrupted(), Ok(b"cd".to_vec())]),
        b"abcd"
    );
    assert_eq!(
        read_through(vec![Ok(b"ab".to_vec()), failed(), Ok(b"cd".to_vec())]),
        b"ab"
    );
}

/// Input delivered in small pieces while more arrives: the pending bytes
/// wrap around inside their ring buffer, and every byte still reaches
/// the driver once, in order.
#[test]
fn input_stream_survives_the_pending_buffer_wrapping() {
    let (dev, _out) = Console::capture();
    let mut fx = activate(dev);
    let input: Vec<u8> = (0..400u32).map(|i| (i % 251) as u8).collect();
    let mut got = Vec::new();
    for (k, piece) in input.chunks(7).enumerate() {
        fx.dev.push_input(piece);
        let a = fx.rx.alloc(5);
        fx.rx.add_chain(&fx.m, &[desc(a, 5, true)]);
        fx.dev.queue_notify(RECEIVEQ, None);
        for (_, len) in fx.rx.take_used(&fx.m) {
            let mut b = vec![0u8; len as usize];
            fx.m.read_slice(&mut b, GuestAddress(a)).unwrap();
            got.extend_from_slice(&b);
        }
        assert_eq!(got[..], input[..got.len()], "after piece {k}");
    }
}

/// A receive buffer that ends at the last byte of guest memory is
/// filled like any other.
#[test]
fn receive_buffer_at_the_end_of_guest_memory() {
    let (dev, _out) = Console::capture();
    let mut fx = activate(dev);
    let end = crate::test_util::MEM_SIZE as u64;
    fx.rx.add_chain(&fx.m, &[desc(end - 4, 4, true)]);
    fx.dev.push_input(b"tail");
    fx.dev.queue_notify(RECEIVEQ, None);
    assert_eq!(fx.rx.take_used(&fx.m), vec![(0, 4)]);
    let mut got = [0u8; 4];
    fx.m.read_slice(&mut got, GuestAddress(end - 4)).unwrap();
    assert_eq!(&got, b"tail");
}

/// A transmit buffer longer than the host chunk (4096 bytes) reaches the
/// output whole, nothing more.
#[test]
fn transmit_longer_than_a_chunk_is_copied_whole() {
    let (dev, out) = Console::capture();
    let mut fx = activate(dev);
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let a = fx.tx.alloc(5000);
    fx.m.write_slice(&data, GuestAddress(a)).unwrap();
    fx.tx.add_chain(&fx.m, &[desc(a, 5000, false)]);
    fx.dev.queue_notify(TRANSMITQ, None);
    assert_eq!(captured(&out), data);
}

/// What the console offers (§5.3.3), and ConfigGeneration moving with
/// each size change (§2.5.1).
#[test]
fn features_and_config_generation() {
    let (dev, _out) = Console::<Mem>::capture();
    assert_eq!(
        dev.device_features(),
        bit(F_SIZE)
            | bit(F_EMERG_WRITE)
            | bit(VIRTIO_F_INDIRECT_DESC)
            | bit(VIRTIO_F_EVENT_IDX)
            | bit(VIRTIO_F_RING_RESET)
    );
    let g = dev.config_generation();
    dev.set_size(10, 20);
    assert_eq!(dev.config_generation(), g.wrapping_add(1));
    dev.set_size(11, 20);
    assert_eq!(dev.config_generation(), g.wrapping_add(2));
}

/// The capture keeps at most its limit: exactly the limit stays whole,
/// one byte more drops the oldest.
#[test]
fn capture_at_and_just_past_its_limit() {
    let (dev, out) = Console::<Mem>::capture_with_limit(8);
    let mut fx = activate(dev);
    let a = fx.tx.alloc(8);
    fx.m.write_slice(b"abcdefgh", GuestAddress(a)).unwrap();
    fx.tx.add_chain(&fx.m, &[desc(a, 4, false)]);
    fx.tx.add_chain(&fx.m, &[desc(a + 4, 4, false)]);
    fx.dev.queue_notify(TRANSMITQ, None);
    assert_eq!(captured(&out), b"abcdefgh");
    let (dev, out) = Console::<Mem>::capture_with_limit(8);
    let mut fx = activate(dev);
    let a = fx.tx.alloc(9);
    fx.m.write_slice(b"xabcdefgh", GuestAddress(a)).unwrap();
    fx.tx.add_chain(&fx.m, &[desc(a, 1, false)]);
    fx.tx.add_chain(&fx.m, &[desc(a + 1, 8, false)]);
    fx.dev.queue_notify(TRANSMITQ, None);
    assert_eq!(captured(&out), b"abcdefgh");
}

/// §2.6.1 (RING_RESET): a reset queue is not served; enabled again, it is
/// served at once (input waiting, output posted).
#[test]
fn reset_queues_are_served_again_once_enabled() {
    let (dev, out) = Console::capture();
    let mut fx = activate(dev);
    fx.dev.queue_reset(RECEIVEQ);
    fx.dev.queue_reset(TRANSMITQ);
    let a = fx.rx.alloc(8);
    fx.rx.add_chain(&fx.m, &[desc(a, 8, true)]);
    fx.dev.push_input(b"abc");
    fx.dev.queue_notify(RECEIVEQ, None);
    assert!(fx.rx.take_used(&fx.m).is_empty());
    let b = fx.tx.alloc(2);
    fx.m.write_slice(b"hi", GuestAddress(b)).unwrap();
    fx.tx.add_chain(&fx.m, &[desc(b, 2, false)]);
    fx.dev.queue_notify(TRANSMITQ, None);
    assert!(captured(&out).is_empty());
    fx.dev.queue_enable(RECEIVEQ, fx.rx.queue(0));
    assert_eq!(fx.rx.take_used(&fx.m), vec![(0, 3)]);
    fx.dev.queue_enable(TRANSMITQ, fx.tx.queue(0));
    assert_eq!(captured(&out), b"hi");
}
