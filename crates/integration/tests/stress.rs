//! Stress: 8 driver threads share one block device (the real file backend)
//! through the loopback, issuing reads, writes and flushes of random sizes
//! while any of them resets the device at random points; the device runs
//! on its worker thread (20 s), on its worker thread with the io_uring
//! engine (8 s) and, shorter, synchronously (5 s).
//!
//! Every thread owns a region of the disk and issues one request at a time,
//! so it knows, for each of its sectors, the writes it issued in order and
//! which were acknowledged. A request still waiting when another thread
//! resets the device is lost: it may have landed or not. Every sector of
//! every written block carries a stamp (its own sector number and the id of
//! the write), so a read (while running) and the image (at the end) show:
//!
//! - every acknowledged write is there, unless a later write replaced it;
//! - nothing landed in the wrong place (the stamp names the sector);
//! - nothing landed twice or late: a write lost at a reset that landed after
//!   the reset returned would overwrite a later acknowledged write (the
//!   worker hand-off must make the device stop before `Status` reads 0).
//!
//! `VMMIO_STRESS_SECS` overrides the worker run's length.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmmio_device::{ExecMode, TransportVersion};
use vmmio_devices::{BlockOptions, IoEngine};
use vmmio_driver::{Dma, Segment, Transport, VirtQueue};
use vmmio_integration::{window_in, GuestHal, Loopback, Mem};
use vmmio_spec::blk::{features, status, types, SECTOR_SIZE};
use vmmio_spec::features::bit;

const THREADS: u64 = 8;
/// Sectors each thread owns.
const REGION: u64 = 256;
/// Largest request, in sectors.
const MAX_SECTORS: u64 = 32;
const SECTOR: usize = SECTOR_SIZE as usize;
const QUEUE_SIZE: u16 = 64;

/// The driver state the threads share: the transport, the request queue,
/// and used entries popped by one thread for another.
struct Driver {
    t: Transport<Loopback>,
    hal: GuestHal,
    q: Option<VirtQueue<GuestHal>>,
    /// Incremented at every reset: requests of an older epoch are lost.
    epoch: u64,
    /// Which thread a chain in flight belongs to (tokens are reused as
    /// soon as a chain is popped).
    owner: HashMap<u16, u64>,
    /// Used lengths popped for each thread (one request in flight each).
    done: HashMap<u64, u32>,
}

impl Driver {
    /// Resets the device (waiting for `Status` to read 0) and brings it
    /// back with a fresh queue; every request in flight is lost.
    fn restart(&mut self) {
        self.t.reset().expect("reset");
        if let Some(q) = self.q.take() {
            self.t.teardown_queue(q).expect("teardown");
        }
        self.t.begin_init(bit(features::FLUSH)).expect("begin_init");
        assert!(self.t.has_feature(features::FLUSH));
        self.q = Some(
            self.t
                .setup_queue(self.hal.clone(), 0, QUEUE_SIZE)
                .expect("queue"),
        );
        self.t.finish_init().expect("DRIVER_OK");
        self.epoch += 1;
        self.owner.clear();
        self.done.clear();
    }
}

fn lock(d: &Mutex<Driver>) -> MutexGuard<'_, Driver> {
    d.lock().expect("a driver thread panicked")
}

/// xorshift64*: small, seeded, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The 512 bytes write `id` puts in `sector`; id 0 is the zeroed image.
fn stamp(sector: u64, id: u64) -> Vec<u8> {
    if id == 0 {
        return vec![0; SECTOR];
    }
    let mut s = Vec::with_capacity(SECTOR);
    s.extend_from_slice(&sector.to_le_bytes());
    s.extend_from_slice(&id.to_le_bytes());
    s.extend((16..SECTOR).map(|i| (id as u8) ^ (sector as u8) ^ (i as u8)));
    s
}

/// Which write's stamp `data` (one sector read at `sector`) is, if any
/// ("none" means garbage or another sector's data).
fn stamp_id(sector: u64, data: &[u8]) -> Option<u64> {
    let id = u64::from_le_bytes(data.get(8..16)?.try_into().ok()?);
    (stamp(sector, id) == data).then_some(id)
}

/// A thread's model of its region: per sector, the writes it issued, in
/// order, with whether each was acknowledged.
struct Model {
    history: Vec<Vec<(u64, bool)>>,
}

impl Model {
    /// Stamps a sector may show now: the last acknowledged write (or the
    /// zeroed image) and any lost write issued after it.
    fn allowed(&self, rel: u64) -> Vec<u64> {
        let h = &self.history[rel as usize];
        let last_acked = h.iter().rposition(|&(_, acked)| acked);
        let mut ok = vec![last_acked.map_or(0, |k| h[k].0)];
        let from = last_acked.map_or(0, |k| k + 1);
        ok.extend(h[from..].iter().map(|&(id, _)| id));
        ok
    }

    fn check(&self, base: u64, rel: u64, data: &[u8], what: &str) {
        let sector = base + rel;
        let id = stamp_id(sector, data);
        let allowed = self.allowed(rel);
        assert!(
            id.is_some_and(|id| allowed.contains(&id)),
            "{what}: sector {sector} holds {id:?} (None: not a stamp of this sector), allowed {allowed:?}"
        );
    }
}

#[derive(Default, Debug)]
struct Counts {
    acked: u64,
    lost: u64,
    resets: u64,
}

enum Outcome {
    Done(u32),
    Lost,
}

/// Submits one request (header, optional data, status) and waits for it
/// or for a reset by another thread.
fn submit(
    drv: &Mutex<Driver>,
    tid: u64,
    req: &mut Dma<GuestHal>,
    data: Option<(&Dma<GuestHal>, usize, bool)>,
) -> Outcome {
    let hdr = Segment {
        addr: req.paddr(),
        len: 16,
    };
    let st = Segment {
        addr: req.paddr() + 16,
        len: 1,
    };
    let mut readable = vec![hdr];
    let mut writable = vec![];
    if let Some((buf, len, device_writes)) = data {
        let seg = Segment {
            addr: buf.paddr(),
            len: len as u32,
        };
        if device_writes {
            writable.push(seg);
        } else {
            readable.push(seg);
        }
    }
    writable.push(st);
    let epoch = {
        let mut d = lock(drv);
        let d = &mut *d;
        let q = d.q.as_mut().expect("queue");
        // SAFETY: the segments lie in this thread's DMA buffers, which it
        // does not touch until the request completes or a reset (which
        // stops the device) loses it.
        let token = unsafe { q.add_segments(&readable, &writable) }.expect("queue room");
        d.t.notify(q).expect("notify");
        d.owner.insert(token, tid);
        d.epoch
    };
    // Generous: a loaded CI machine is slow, but a request that neither
    // completes nor is lost to a reset means the device lost it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "thread {tid}: a request neither completed nor was lost to a reset"
        );
        {
            let mut d = lock(drv);
            let d = &mut *d;
            if d.epoch != epoch {
                return Outcome::Lost;
            }
            let q = d.q.as_mut().expect("queue");
            while let Some(used) = q.pop_used().expect("a valid used ring") {
                let owner = d.owner.remove(&used.token).expect("a token in flight");
                d.done.insert(owner, used.len);
            }
            if let Some(len) = d.done.remove(&tid) {
                return Outcome::Done(len);
            }
        }
        std::thread::yield_now();
    }
}

fn header(req: &mut Dma<GuestHal>, kind: u32, sector: u64) {
    let mut h = [0u8; 17];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h[16] = 0xff;
    req.write_bytes(0, &h).expect("header");
}

fn status_byte(req: &Dma<GuestHal>) -> u8 {
    let mut s = [0u8];
    req.read_bytes(16, &mut s).expect("status");
    s[0]
}

fn driver_thread(
    drv: Arc<Mutex<Driver>>,
    hal: GuestHal,
    tid: u64,
    until: Instant,
) -> (Model, Counts) {
    let base = tid * REGION;
    let mut model = Model {
        history: vec![Vec::new(); REGION as usize],
    };
    let mut counts = Counts::default();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (tid + 1).wrapping_mul(0x1234_5678_9abc_def1));
    let mut req = Dma::new(hal.clone(), 4096).expect("dma");
    let mut buf = Dma::new(hal, (MAX_SECTORS * SECTOR_SIZE) as usize).expect("dma");
    let mut seq = 0u64;
    while Instant::now() < until {
        let op = rng.below(1000);
        let n = 1 + rng.below(MAX_SECTORS);
        let rel = rng.below(REGION - n + 1);
        let len = (n * SECTOR_SIZE) as usize;
        if op < 4 {
            lock(&drv).restart();
            counts.resets += 1;
        } else if op < 500 {
            seq += 1;
            let id = (tid + 1) << 40 | seq;
            let data: Vec<u8> = (0..n).flat_map(|i| stamp(base + rel + i, id)).collect();
            buf.write_bytes(0, &data).expect("data");
            header(&mut req, types::OUT, base + rel);
            let outcome = submit(&drv, tid, &mut req, Some((&buf, len, false)));
            let acked = match outcome {
                Outcome::Done(_) => {
                    assert_eq!(status_byte(&req), status::OK, "write {id}");
                    counts.acked += 1;
                    true
                }
                Outcome::Lost => {
                    counts.lost += 1;
                    false
                }
            };
            for i in 0..n {
                model.history[(rel + i) as usize].push((id, acked));
            }
        } else if op < 900 {
            header(&mut req, types::IN, base + rel);
            match submit(&drv, tid, &mut req, Some((&buf, len, true))) {
                Outcome::Done(used) => {
                    assert_eq!(status_byte(&req), status::OK);
                    assert_eq!(used as usize, len + 1, "read used length");
                    let mut data = vec![0u8; len];
                    buf.read_bytes(0, &mut data).expect("data");
                    for i in 0..n {
                        let s = &data[(i as usize) * SECTOR..][..SECTOR];
                        model.check(base, rel + i, s, "read");
                    }
                    counts.acked += 1;
                }
                Outcome::Lost => counts.lost += 1,
            }
        } else {
            header(&mut req, types::FLUSH, 0);
            match submit(&drv, tid, &mut req, None) {
                Outcome::Done(_) => {
                    assert_eq!(status_byte(&req), status::OK, "flush");
                    counts.acked += 1;
                }
                Outcome::Lost => counts.lost += 1,
            }
        }
    }
    (model, counts)
}

fn stress(exec: ExecMode, engine: IoEngine, secs: u64) {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    std::io::Write::write_all(
        &mut file,
        &vec![0u8; (THREADS * REGION * SECTOR_SIZE) as usize],
    )
    .expect("image");
    let options = BlockOptions {
        engine,
        ..BlockOptions::default()
    };
    let dev = vmmio_devices::Block::<Mem, _>::from_path_with_options(file.path(), options)
        .expect("block device");
    assert_eq!(dev.engine(), engine);
    let mut w = window_in(exec, TransportVersion::Modern, Box::new(dev));
    w.io.poll_backends = true;
    let t = Transport::probe(w.io).expect("probe").expect("a device");
    let mut driver = Driver {
        t,
        hal: w.hal.clone(),
        q: None,
        epoch: 0,
        owner: HashMap::new(),
        done: HashMap::new(),
    };
    driver.restart();
    let drv = Arc::new(Mutex::new(driver));
    let until = Instant::now() + Duration::from_secs(secs);
    let threads: Vec<_> = (0..THREADS)
        .map(|tid| {
            let (drv, hal) = (drv.clone(), w.hal.clone());
            std::thread::spawn(move || driver_thread(drv, hal, tid, until))
        })
        .collect();
    let results: Vec<(Model, Counts)> = threads
        .into_iter()
        .map(|t| t.join().expect("driver thread"))
        .collect();
    // Stop the device before looking at the image.
    lock(&drv).t.reset().expect("final reset");
    let image = std::fs::read(file.path()).expect("read image");
    let mut total = Counts::default();
    for (tid, (model, counts)) in results.iter().enumerate() {
        let base = tid as u64 * REGION;
        for rel in 0..REGION {
            let at = ((base + rel) * SECTOR_SIZE) as usize;
            model.check(base, rel, &image[at..at + SECTOR], "image");
        }
        total.acked += counts.acked;
        total.lost += counts.lost;
        total.resets += counts.resets;
    }
    eprintln!("{exec} stress, {engine} engine, {secs} s: {total:?}");
    assert!(
        total.acked > 1000,
        "too little I/O to mean anything: {total:?}"
    );
    assert!(total.resets > 0, "no reset happened: {total:?}");
}

#[test]
fn eight_threads_with_random_resets_worker() {
    let secs = std::env::var("VMMIO_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    stress(ExecMode::Worker, IoEngine::Sync, secs);
}

/// The io_uring engine: requests of the 8 threads in flight in the kernel
/// at once, completed out of order, and every reset cancels or waits for
/// them (a write landing after its reset would fail the image check).
#[test]
fn eight_threads_with_random_resets_worker_io_uring() {
    stress(ExecMode::Worker, IoEngine::IoUring, 8);
}

#[test]
fn eight_threads_with_random_resets_sync() {
    stress(ExecMode::Sync, IoEngine::Sync, 5);
}
