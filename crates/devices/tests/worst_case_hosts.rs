//! Host resources under a hostile guest and a flooding host peer, for the
//! devices with a receive path fed by the host (the pattern of
//! `worst_case.rs`, through a real Version 2 `MmioTransport`, its host fds
//! polled as a synchronous embedder does with `poll_backends`):
//!
//! - net receive over a `-netdev stream` socket whose peer writes the
//!   largest frames (64 KiB, and now and then an oversized length prefix)
//!   without end, faster than the guest posts buffers; then the longest
//!   legal receive chain (32768 descriptors of 512 bytes), the largest
//!   buffers (32 MiB, 4 GiB - 512 bytes beyond guest RAM), 100 000
//!   notifications, 2 000 resets, 1 000 000 config reads, the flood going
//!   on all along; without and with MRG_RXBUF;
//! - vsock: a host program writing without end to a guest that never reads
//!   (its credit runs out, the device stops reading the host), guest
//!   REQUESTs beyond the connection limit, each connection sending its
//!   whole credit to a host program that never reads, host programs
//!   knocking beyond the limit, the longest legal chains and largest
//!   buffers on tx and rx, 100 000 notifications (half carrying a packet
//!   for no connection while the guest posts no rx buffer: the RST reply
//!   queue is bounded), 2 000 resets, 1 000 000 config reads.
//!
//! Every call returns, and the peak resident memory grows by at most the
//! documented host-side bound plus the guest memory the device may fill:
//! net [`HOST_BOUND`] (its backlog is 1 MiB, the stream's buffers 256 KiB);
//! vsock `max_connections x (buf_alloc + STAGE_SIZE)` (guest payload
//! waiting for host programs, host bytes waiting for rx buffers) plus
//! [`HOST_BOUND`]. Removing the net backlog's bound fails the test.
//!
//! A binary of its own, one `#[test]`: the peak is per process.

mod support {
    // Each test binary uses part of the rig.
    #[allow(dead_code)]
    pub mod rig;
}

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vmmio_devices::net::{Stream, MAX_FRAME_LEN};
use vmmio_devices::vsock::{
    Header, Vsock, VsockOptions, BUF_ALLOC, F_STREAM, HEADER_SIZE, HOST_CID, MAX_PKT_PAYLOAD, RXQ,
    STAGE_SIZE, TXQ,
};
use vmmio_devices::Net;
use vmmio_spec::mmio;
use vmmio_spec::vsock::{op, TYPE_STREAM};
use vmmio_spec::{Le16, Le32, Le64};

use support::rig::{assert_peak_within, peak_rss, reset_peak, Rig, DATA, HEADER, QUEUE};

/// Guest memory a device may fill, in bytes: the 32 MiB buffer (the 16 MiB
/// chain lies inside it) and the rings.
const GUEST_WRITES: u64 = 34 << 20;
/// Host memory besides the device's documented per-connection buffers and
/// the guest memory it fills, in bytes (threads, the test's own buffers).
const HOST_BOUND: u64 = 16 << 20;
/// Polls without waiting.
const NOW: Duration = Duration::ZERO;

/// A thread writing `frames` to `sock` until a write fails or `stop`.
fn flood(
    mut sock: UnixStream,
    stop: Arc<AtomicBool>,
    mut next: impl FnMut(&mut Vec<u8>) + Send + 'static,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            buf.clear();
            next(&mut buf);
            if sock.write_all(&buf).is_err() {
                break;
            }
        }
    })
}

fn net_receive(mrg: bool) {
    let name = if mrg {
        "net (receiveq, MRG_RXBUF)"
    } else {
        "net (receiveq)"
    };
    reset_peak();
    let before = peak_rss();
    let (ours, peer) = UnixStream::pair().expect("socket pair");
    let stop = Arc::new(AtomicBool::new(false));
    // The largest frames, every 64th with an oversized length prefix
    // (the device skips it and its bytes).
    let mut i = 0u64;
    let flooder = flood(peer, stop.clone(), move |buf| {
        let len = if i % 64 == 63 {
            MAX_FRAME_LEN + 1
        } else {
            MAX_FRAME_LEN
        };
        i += 1;
        buf.extend_from_slice(&(len as u32).to_be_bytes());
        buf.resize(4 + len, 0x5a);
    });
    let dev = Net::<support::rig::Mem>::new(Box::new(Stream::new(ours).expect("stream")))
        .with_queue_size(QUEUE);
    let stats = dev.handle();
    let features = if mrg {
        1 << vmmio_spec::net::F_MRG_RXBUF
    } else {
        0
    };
    let mut rig = Rig::new(Box::new(dev), &[0, 1], features);

    // Frames faster than buffers: one 2 KiB buffer per 20 polls (frames
    // too long for it are dropped, or spread with MRG_RXBUF).
    let mut used = 0;
    // The first frame (the flood thread is running).
    rig.poll(Duration::from_secs(10));
    for k in 0..4_000u16 {
        rig.poll(Duration::from_micros(100));
        if k % 20 == 0 {
            let head = k / 20;
            rig.add(0, head, &[(DATA + 2048 * u64::from(head), 2048, true)]);
            rig.notify(0);
        }
        used += rig.take_used(0).len();
    }
    eprintln!("{name}: {used} buffers used, {:?}", stats.stats());
    if mrg {
        assert!(used > 0, "{name}: the flood reached the guest");
    }
    // The longest legal chain, then the largest buffers.
    rig.start();
    let chain: Vec<(u64, u32, bool)> = (0..u64::from(QUEUE))
        .map(|k| (DATA + 512 * k, 512, true))
        .collect();
    rig.submit(0, &chain);
    rig.poll(NOW);
    rig.start();
    rig.submit(0, &[(DATA, 32 << 20, true)]);
    rig.poll(NOW);
    rig.submit(0, &[(DATA, u32::MAX - 511, true)]);
    rig.poll(NOW);
    // Notifications in a tight loop, half with a new buffer.
    rig.start();
    for k in 0..100_000u32 {
        if k % 2 == 0 {
            let head = (k / 2 % u32::from(QUEUE)) as u16;
            rig.add(
                0,
                head,
                &[(DATA + 2048 * u64::from(head % 1024), 2048, true)],
            );
        }
        rig.notify(0);
        if k % 100 == 0 {
            rig.poll(NOW);
        }
    }
    // Resets in a loop.
    for _ in 0..2_000 {
        rig.start();
        rig.submit(0, &[(DATA, 2048, true)]);
        rig.poll(NOW);
    }
    config_reads(&mut rig);
    stop.store(true, Ordering::Relaxed);
    rig.w(mmio::STATUS, 0);
    // Closing the device's socket ends the flood.
    drop(rig);
    flooder.join().expect("flood thread");
    assert_peak_within(name, before, GUEST_WRITES + HOST_BOUND);
}

fn config_reads(rig: &mut Rig) {
    let mut sum = 0u64;
    for i in 0..1_000_000u64 {
        sum = sum.wrapping_add(u64::from(rig.r(mmio::CONFIG + 4 * (i % 16))));
    }
    std::hint::black_box(sum);
}

/// Raises the soft fd limit to at least `n` if the hard limit allows;
/// returns the soft limit then.
fn fd_limit(n: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < n {
        lim.rlim_cur = n.min(lim.rlim_max);
        // SAFETY: as above; only the soft limit changes.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
    lim.rlim_cur
}

/// The vsock tx side of the rig: packets as chains of a header buffer and
/// a payload buffer, at rotating descriptors.
struct Tx {
    next: u16,
}

const CID: u64 = 3;
const HOST_PORT: u32 = 5000;
/// Guest memory for vsock headers (one slot per descriptor pair).
const HDRS: u64 = HEADER;

impl Tx {
    fn header(src_port: u32, opc: u16, len: u32) -> Header {
        Header {
            src_cid: Le64::new(CID),
            dst_cid: Le64::new(HOST_CID),
            src_port: Le32::new(src_port),
            dst_port: Le32::new(HOST_PORT),
            len: Le32::new(len),
            type_: Le16::new(TYPE_STREAM),
            op: Le16::new(opc),
            flags: Le32::new(0),
            buf_alloc: Le32::new(BUF_ALLOC),
            fwd_cnt: Le32::new(0),
        }
    }

    /// Makes packet `h` with `payload` bytes at [`DATA`] available on tx.
    fn add(&mut self, rig: &mut Rig, h: &Header, payload: u32) {
        use vm_memory::{Bytes, GuestAddress};
        let slot = u64::from(self.next / 2 % 256);
        let at = HDRS + slot * HEADER_SIZE as u64;
        rig.mem
            .write_slice(&h.to_bytes(), GuestAddress(at))
            .expect("header");
        let mut parts = vec![(at, HEADER_SIZE as u32, false)];
        if payload > 0 {
            parts.push((DATA, payload, false));
        }
        rig.add(TXQ, self.next, &parts);
        self.next = self.next.wrapping_add(2) % QUEUE;
    }
}

/// Posts `n` rx buffers of `len` bytes at rotating descriptors.
fn post_rx(rig: &mut Rig, next: &mut u16, n: u16, len: u32) {
    for _ in 0..n {
        let at = DATA + (64 << 20 >> 2) + u64::from(*next % 64) * u64::from(len);
        rig.add(RXQ, *next, &[(at, len, true)]);
        *next = next.wrapping_add(1) % QUEUE;
    }
    rig.notify(RXQ);
}

fn vsock() {
    let name = "vsock";
    let opts = VsockOptions {
        queue_size: QUEUE,
        ..VsockOptions::default()
    };
    // Each connection: the device's end and the host program's end.
    let fds = fd_limit(3 * opts.max_connections as u64 + 256);
    let max_connections = opts
        .max_connections
        .min((fds.saturating_sub(256) / 3) as usize);
    let opts = VsockOptions {
        max_connections,
        ..opts
    };
    reset_peak();
    let before = peak_rss();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("v.sock");
    let host = UnixListener::bind(format!("{}_{HOST_PORT}", path.display())).expect("host port");
    host.set_nonblocking(true).expect("non-blocking");
    let stop = Arc::new(AtomicBool::new(false));
    // The host programs: the first writes without end, the others never
    // read.
    let held = Arc::new(Mutex::new(Vec::new()));
    let acceptor = {
        let (stop, held) = (stop.clone(), held.clone());
        std::thread::spawn(move || {
            let mut flooder = None;
            while !stop.load(Ordering::Relaxed) {
                match host.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).expect("blocking");
                        if flooder.is_none() {
                            let w = s.try_clone().expect("clone");
                            flooder = Some(flood(w, stop.clone(), |buf| {
                                buf.resize(64 * 1024, 0xa5);
                            }));
                        }
                        held.lock().expect("held").push(s);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
            held.lock().expect("held").clear();
            if let Some(f) = flooder {
                f.join().expect("flood thread");
            }
        })
    };
    let dev = Vsock::<support::rig::Mem>::with_options(CID, &path, opts).expect("vsock");
    let mut rig = Rig::new(Box::new(dev), &[RXQ, TXQ, 2], 1 << F_STREAM);
    let (mut tx, mut rx) = (Tx { next: 0 }, 0u16);

    // A host program writing without end to a guest that never reads: the
    // guest's credit (BUF_ALLOC) runs out, the device stops reading.
    post_rx(&mut rig, &mut rx, 64, 4096);
    tx.add(&mut rig, &Tx::header(1, op::REQUEST, 0), 0);
    rig.notify(TXQ);
    let (mut packets, mut bytes) = (0u64, 0u64);
    let mut unused = 64;
    let credit_used = |packets: u64, bytes: u64| bytes - packets * HEADER_SIZE as u64;
    // Until the credit is used up (the flood thread may start late on a
    // busy machine), then 200 rounds more in which nothing may come.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut after = 0;
    while after < 200 && std::time::Instant::now() < deadline {
        rig.poll(Duration::from_micros(100));
        for (_, len) in rig.take_used(RXQ) {
            packets += 1;
            bytes += u64::from(len);
            unused -= 1;
        }
        if unused < 32 {
            post_rx(&mut rig, &mut rx, 32, 4096);
            unused += 32;
        }
        if credit_used(packets, bytes) >= u64::from(BUF_ALLOC) {
            after += 1;
        }
    }
    eprintln!("{name}: {packets} packets, {bytes} bytes to a guest that never reads");
    // RESPONSE, then exactly the credit in data, then nothing.
    assert_eq!(
        credit_used(packets, bytes),
        u64::from(BUF_ALLOC),
        "{name}: payload sent to a guest that never reads"
    );
    // Connections beyond the limit, each sending its whole credit to a
    // host program that never reads.
    for port in 2..(max_connections as u32 + 64) {
        tx.add(&mut rig, &Tx::header(port, op::REQUEST, 0), 0);
        tx.add(
            &mut rig,
            &Tx::header(port, op::RW, MAX_PKT_PAYLOAD),
            MAX_PKT_PAYLOAD,
        );
        if port % 16 == 0 {
            rig.notify(TXQ);
            post_rx(&mut rig, &mut rx, 64, 64);
            rig.poll(Duration::from_micros(100));
            rig.take_used(RXQ);
            rig.take_used(TXQ);
        }
    }
    rig.notify(TXQ);
    for _ in 0..100 {
        rig.poll(Duration::from_micros(100));
    }
    let connected = held.lock().expect("held").len();
    eprintln!("{name}: {connected} host programs connected (limit {max_connections})");
    assert!(
        (64..=max_connections).contains(&connected),
        "{name}: {connected} connections for a limit of {max_connections}"
    );
    // Host programs knocking beyond the limit.
    let knocking: Vec<UnixStream> = (0..64)
        .filter_map(|_| UnixStream::connect(&path).ok())
        .collect();
    for _ in 0..100 {
        rig.poll(NOW);
    }
    drop(knocking);
    // The longest legal chains: a tx packet over 32768 descriptors, an rx
    // buffer over 32768 descriptors.
    let mut chain: Vec<(u64, u32, bool)> = vec![(HDRS, HEADER_SIZE as u32, false)];
    chain.extend((1..u64::from(QUEUE)).map(|k| (DATA + 512 * k, 512, false)));
    {
        use vm_memory::{Bytes, GuestAddress};
        let h = Tx::header(1, op::RW, MAX_PKT_PAYLOAD);
        rig.mem
            .write_slice(&h.to_bytes(), GuestAddress(HDRS))
            .expect("header");
    }
    rig.start();
    rig.submit(TXQ, &chain);
    let chain: Vec<(u64, u32, bool)> = (0..u64::from(QUEUE))
        .map(|k| (DATA + 512 * k, 512, true))
        .collect();
    rig.submit(RXQ, &chain);
    rig.poll(NOW);
    // The largest buffers.
    rig.start();
    let mut tx = Tx { next: 0 };
    tx.add(&mut rig, &Tx::header(1, op::RW, MAX_PKT_PAYLOAD), 32 << 20);
    tx.add(
        &mut rig,
        &Tx::header(1, op::RW, MAX_PKT_PAYLOAD),
        u32::MAX - 511,
    );
    rig.notify(TXQ);
    rig.submit(RXQ, &[(DATA, 32 << 20, true)]);
    rig.add(RXQ, 1, &[(DATA, u32::MAX - 511, true)]);
    rig.notify(RXQ);
    rig.poll(NOW);
    // Notifications in a tight loop; half bring a packet for no
    // connection, whose RST waits for an rx buffer that never comes.
    rig.start();
    let mut tx = Tx { next: 0 };
    for k in 0..100_000u32 {
        if k % 2 == 0 {
            tx.add(&mut rig, &Tx::header(k / 2 + 100_000, op::RW, 0), 0);
        }
        rig.notify(TXQ);
        if k % 100 == 0 {
            rig.poll(NOW);
        }
    }
    // Resets in a loop, each with a connection.
    for port in 0..2_000 {
        rig.start();
        rx = 0;
        post_rx(&mut rig, &mut rx, 1, 64);
        let mut tx = Tx { next: 0 };
        tx.add(&mut rig, &Tx::header(port + 1, op::REQUEST, 0), 0);
        rig.notify(TXQ);
        rig.poll(NOW);
    }
    config_reads(&mut rig);
    stop.store(true, Ordering::Relaxed);
    rig.w(mmio::STATUS, 0);
    drop(rig);
    acceptor.join().expect("acceptor");
    let per_conn = u64::from(BUF_ALLOC) + STAGE_SIZE as u64;
    assert_peak_within(
        name,
        before,
        max_connections as u64 * per_conn + GUEST_WRITES + HOST_BOUND,
    );
}

#[test]
fn receive_paths_survive_worst_cases_and_flooding_peers_within_a_memory_bound() {
    net_receive(false);
    net_receive(true);
    vsock();
}
