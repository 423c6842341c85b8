//! Host resources under a hostile guest: for each device (block over a
//! file, with the sync and the io_uring engine, entropy, net over a stream socket whose peer never reads,
//! console), the worst a driver may legally (or almost
//! legally) ask, through a real `MmioTransport` (Version 2):
//!
//! - the longest legal chain: `QueueSizeMax` = 32768 descriptors in one
//!   chain of 512-byte buffers (16 MiB);
//! - the largest requests: one 32 MiB buffer, and one of 4 GiB - 512 bytes
//!   that guest memory cannot hold;
//! - notifications in a tight loop (100 000, half with a new request, half
//!   with nothing new);
//! - resets in a loop (2 000 handshakes, queue setups, DRIVER_OK, one
//!   request, reset);
//! - configuration reads in a loop (1 000 000).
//!
//! Every call returns (the test ends), and the process's peak resident
//! memory (`VmHWM`, reset through `/proc/self/clear_refs` before each
//! device) grows by at most the guest memory the device may legitimately
//! fill ([`GUEST_WRITES`], devices that write buffers only) plus
//! [`HOST_BOUND`] (16 MiB) of host-side memory. An unbounded console
//! capture, for one, grows by about 30 MiB here and fails.
//!
//! One `#[test]` runs the devices one after the other: the peak is
//! per process, so parallel tests would blur it.

mod support {
    // Each test binary uses part of the rig.
    #[allow(dead_code)]
    pub mod rig;
}

use vm_memory::{Bytes, GuestAddress};
use vmmio_device::VirtioDevice;
use vmmio_devices::net::Stream;
use vmmio_devices::rng::EntropySource;
use vmmio_devices::{Block, BlockOptions, Console, IoEngine, Net, Rng};
use vmmio_spec::mmio;

use support::rig::{
    assert_peak_within, peak_rss, reset_peak, Mem, Rig, DATA, HEADER, QUEUE, STATUS,
};

/// Guest memory a device that writes into buffers may fill, in bytes: the
/// 32 MiB buffer (the 16 MiB chain lies inside it) and the rings.
const GUEST_WRITES: u64 = 34 << 20;
/// Host memory a device may use besides the guest memory it fills, in
/// bytes (the test's own rings and descriptor writes included).
const HOST_BOUND: u64 = 16 << 20;

/// Counter entropy: deterministic and allocation-free.
struct Counter(u8);
impl EntropySource for Counter {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), getrandom::Error> {
        for b in buf {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
        Ok(())
    }
}

/// A request chain for `device`: the block header and status around the
/// data buffers, or just the buffers.
fn chain(block: bool, writable: bool, data: &[(u64, u32)]) -> Vec<(u64, u32, bool)> {
    let mut parts = Vec::with_capacity(data.len() + 2);
    if block {
        parts.push((HEADER, 16, false));
    }
    parts.extend(data.iter().map(|&(a, l)| (a, l, writable)));
    if block {
        parts.push((STATUS, 1, true));
    }
    parts
}

/// Runs every worst case against the device `make` builds, on queue
/// `queue`; `writable`: the device writes into the data buffers.
fn worst_cases(
    name: &str,
    make: &dyn Fn() -> Box<dyn VirtioDevice<Mem> + Send>,
    queue: u16,
    block: bool,
    writable: bool,
) {
    reset_peak();
    let before = peak_rss();
    // Block: VIRTIO_BLK_F_FLUSH, so writes are not each synced (the test
    // is about memory, not the disk).
    let features = if block {
        1 << vmmio_spec::blk::features::FLUSH
    } else {
        0
    };
    let mut rig = Rig::new(make(), &[queue], features);
    if block {
        // VIRTIO_BLK_T_IN (or OUT) at sector 0.
        let kind: u32 = if writable { 0 } else { 1 };
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        rig.mem
            .write_slice(&h, GuestAddress(HEADER))
            .expect("header");
    }
    let room = if block { QUEUE - 2 } else { QUEUE };

    // The longest legal chain: every descriptor of the queue, 512 bytes each.
    let data: Vec<(u64, u32)> = (0..u64::from(room))
        .map(|i| (DATA + 512 * i, 512))
        .collect();
    rig.submit(queue, &chain(block, writable, &data));
    // The largest requests: 32 MiB in one buffer, then 4 GiB - 512 bytes.
    rig.submit(queue, &chain(block, writable, &[(DATA, 32 << 20)]));
    rig.submit(queue, &chain(block, writable, &[(DATA, u32::MAX - 511)]));
    // Notifications in a tight loop.
    for i in 0..100_000u32 {
        if i % 2 == 0 {
            rig.submit(queue, &chain(block, writable, &[(DATA, 512)]));
        } else {
            rig.notify(queue);
        }
    }
    // Resets in a loop.
    for _ in 0..2_000 {
        rig.start();
        rig.submit(queue, &chain(block, writable, &[(DATA, 512)]));
    }
    // Configuration reads in a loop.
    let mut sum = 0u64;
    for i in 0..1_000_000u64 {
        sum = sum.wrapping_add(u64::from(rig.r(mmio::CONFIG + 4 * (i % 16))));
    }
    std::hint::black_box(sum);
    rig.w(mmio::STATUS, 0);
    drop(rig);
    let bound = if writable { GUEST_WRITES } else { 0 } + HOST_BOUND;
    assert_peak_within(name, before, bound);
}

#[test]
fn each_device_survives_worst_cases_within_a_memory_bound() {
    let image = tempfile::NamedTempFile::new().expect("image");
    // Sparse: the file's pages are page cache, not our resident memory.
    image.as_file().set_len(64 << 20).expect("size");
    let path = image.path().to_path_buf();
    let runs = [IoEngine::Sync, IoEngine::IoUring]
        .into_iter()
        .flat_map(|e| [true, false].map(|w| (e, w)));
    for (engine, writable) in runs {
        let path = path.clone();
        worst_cases(
            &format!(
                "block ({}, {engine} engine)",
                if writable { "IN" } else { "OUT" }
            ),
            &move || {
                Box::new(
                    Block::<Mem, _>::from_path_with_options(
                        &path,
                        BlockOptions {
                            queue_size: QUEUE,
                            engine,
                            ..BlockOptions::default()
                        },
                    )
                    .expect("block device"),
                )
            },
            0,
            true,
            writable,
        );
    }
    worst_cases(
        "entropy",
        &|| Box::new(Rng::<Mem>::with_source(Box::new(Counter(0))).with_queue_size(QUEUE)),
        0,
        false,
        true,
    );
    // Net: transmit to a stream peer that never reads (the socket buffer
    // fills, frames wait or drop; nothing may pile up on the host).
    let (ours, peer) = std::os::unix::net::UnixStream::pair().expect("socket pair");
    let ours = std::sync::Mutex::new(Some(ours));
    worst_cases(
        "net (transmitq)",
        &|| {
            let sock = ours.lock().expect("socket").take().expect("one net device");
            Box::new(
                Net::<Mem>::new(Box::new(Stream::new(sock).expect("stream")))
                    .with_queue_size(QUEUE),
            )
        },
        1,
        false,
        false,
    );
    drop(peer);
    worst_cases(
        "console (transmitq)",
        &|| Box::new(Console::<Mem>::new(Box::new(std::io::sink())).with_queue_size(QUEUE)),
        1,
        false,
        false,
    );
}
