//! A fio-style table: 4 KiB random reads and writes at queue depth 1, 8
//! and 32, and 1 MiB sequential reads and writes at depth 1 and 8, through
//! four paths over the same file in the page cache, measured in the same
//! run:
//!
//! - `pread`: `pread(2)` / `pwrite(2)`, one request at a time (what a
//!   synchronous engine does per request);
//! - `io_uring`: raw io_uring on the file, `depth` READV / WRITEV SQEs per
//!   `io_uring_enter`, then their completions (fio's io_uring engine, the
//!   floor of ours);
//! - `ours sync`: the loopback block path (driver -> rings -> device) with
//!   the device's synchronous engine;
//! - `ours uring`: the same with the device's io_uring engine.
//!
//! Both of ours run the device in [`ExecMode::Sync`] (inside the kick;
//! io_uring completions that the kick does not see are waited for in
//! `MmioTransport::poll_backends`). Ratios: `ours sync / pread`, `ours
//! uring / io_uring`. Each side runs in alternating rounds and keeps its
//! best one (see `report`). A request that fails stops the run with its
//! error: no figure is printed for a side that failed.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{opcode, types, IoUring};
use vmmio_device::ExecMode;
use vmmio_devices::IoEngine;
use vmmio_driver::blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};

use crate::block::{random_offsets, DiskFile, Pread, RawQueue, FILE_SIZE, LARGE, OFFSETS, SMALL};
use crate::report::{rate, Timing};

/// One workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Write (else read).
    pub write: bool,
    /// Random offsets (else sequential).
    pub random: bool,
    /// Request size in bytes.
    pub len: usize,
    /// Requests in flight (submitted per batch).
    pub depth: usize,
}

impl Workload {
    /// fio's names: randread / randwrite / read / write, size, depth.
    pub fn name(&self) -> String {
        let rw = match (self.random, self.write) {
            (true, false) => "randread",
            (true, true) => "randwrite",
            (false, false) => "read",
            (false, true) => "write",
        };
        let size = if self.len >= LARGE {
            format!("{}M", self.len / LARGE)
        } else {
            format!("{}K", self.len / 1024)
        };
        format!("{rw} {size} QD{}", self.depth)
    }
}

/// Every workload of the table, in order.
pub fn workloads() -> Vec<Workload> {
    let mut w = Vec::new();
    for write in [false, true] {
        for depth in [1, 8, 32] {
            w.push(Workload {
                write,
                random: true,
                len: SMALL,
                depth,
            });
        }
    }
    for write in [false, true] {
        for depth in [1, 8] {
            w.push(Workload {
                write,
                random: false,
                len: LARGE,
                depth,
            });
        }
    }
    w
}

/// One line of the table: requests per second of each path.
#[derive(Clone, Debug, PartialEq)]
pub struct FioRow {
    /// The workload.
    pub workload: Workload,
    /// `pread` / `pwrite`, one at a time.
    pub pread: f64,
    /// Raw io_uring on the file.
    pub uring: f64,
    /// Ours, synchronous engine.
    pub ours_sync: f64,
    /// Ours, io_uring engine.
    pub ours_uring: f64,
}

/// Raw io_uring on the disk file: `depth` buffers, one READV / WRITEV SQE
/// each per batch.
struct UringPeer {
    ring: IoUring,
    file: File,
    /// Page-aligned storage of `depth` buffers of `len` bytes.
    storage: Vec<u8>,
    start: usize,
    len: usize,
    depth: usize,
    iov: Vec<libc::iovec>,
}

impl UringPeer {
    fn new(disk: &DiskFile, len: usize, depth: usize) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(disk.path())?;
        let ring = IoUring::new(
            u32::try_from(depth.max(2))
                .unwrap_or(32)
                .next_power_of_two(),
        )?;
        let mut storage = vec![0u8; len * depth + 4096];
        let start = storage.as_ptr().align_offset(4096);
        let base = storage[start..].as_mut_ptr();
        let iov = (0..depth)
            .map(|k| libc::iovec {
                // `k * len + len <= len * depth`: inside `storage`.
                iov_base: base.wrapping_add(k * len).cast(),
                iov_len: len,
            })
            .collect();
        Ok(Self {
            ring,
            file,
            storage,
            start,
            len,
            depth,
            iov,
        })
    }

    /// One request per offset (at most `depth`), one submit, all
    /// completions.
    fn batch(&mut self, write: bool, offsets: &[u64]) -> io::Result<()> {
        let n = offsets.len().min(self.depth);
        let fd = types::Fd(self.file.as_raw_fd());
        for (k, &off) in offsets[..n].iter().enumerate() {
            let iov: *const libc::iovec = &self.iov[k];
            let sqe = if write {
                opcode::Writev::new(fd, iov, 1).offset(off).build()
            } else {
                opcode::Readv::new(fd, iov, 1).offset(off).build()
            };
            // SAFETY: the iovec and the buffer it names live in `self`
            // (`self.iov`, `self.storage`, neither resized after `new`),
            // and this function reaps every SQE it pushed before
            // returning (or the error path below leaves them to `Drop`
            // of the ring, which the kernel cancels; `self` outlives it).
            unsafe { self.ring.submission().push(&sqe) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        self.ring.submit_and_wait(n)?;
        let mut seen = 0;
        while seen < n {
            let Some(cqe) = self.ring.completion().next() else {
                self.ring.submit_and_wait(1)?;
                continue;
            };
            seen += 1;
            if usize::try_from(cqe.result()).ok() != Some(self.len) {
                return Err(if cqe.result() < 0 {
                    io::Error::from_raw_os_error(-cqe.result())
                } else {
                    io::Error::other("short io_uring transfer")
                });
            }
        }
        Ok(())
    }

    /// Buffer 0 (for checks).
    fn data(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

/// The offsets of batch `i` of `w`: random from `random`, or sequential.
fn batch_offsets(w: Workload, random: &[u64], i: usize, out: &mut Vec<u64>) {
    out.clear();
    for k in 0..w.depth {
        let j = i * w.depth + k;
        out.push(if w.random {
            random[j % random.len()]
        } else {
            (j * w.len) as u64 % FILE_SIZE
        });
    }
}

/// Best rate of each side, in alternating rounds after one warm-up round
/// each.
fn best_of(timing: Timing, sides: &mut [&mut dyn FnMut() -> u64]) -> Vec<f64> {
    for f in sides.iter_mut() {
        rate(timing.round / 4, *f);
    }
    let mut best = vec![0f64; sides.len()];
    for _ in 0..timing.rounds {
        for (b, f) in best.iter_mut().zip(sides.iter_mut()) {
            *b = b.max(rate(timing.round, *f));
        }
    }
    best
}

/// Runs every workload over the four paths.
///
/// # Errors
/// Creating the scratch file, setting up a path (io_uring missing from the
/// kernel included), or the first request of any side that fails.
pub fn run(quick: bool) -> io::Result<Vec<FioRow>> {
    let timing = Timing::new(quick);
    let disk = DiskFile::create()?;
    let random = random_offsets(OFFSETS);
    let mut rows = Vec::new();
    for w in workloads() {
        rows.push(run_one(timing, &disk, &random, w)?);
    }
    Ok(rows)
}

fn run_one(timing: Timing, disk: &DiskFile, random: &[u64], w: Workload) -> io::Result<FioRow> {
    let kind = if w.write {
        VIRTIO_BLK_T_OUT
    } else {
        VIRTIO_BLK_T_IN
    };
    let mut pread = Pread::with_buffers(disk, w.len, w.depth)?;
    let mut peer = UringPeer::new(disk, w.len, w.depth)?;
    let mut sync =
        RawQueue::with_engine(disk, w.len, w.depth, ExecMode::Sync, false, IoEngine::Sync)?;
    let mut ours = RawQueue::with_engine(
        disk,
        w.len,
        w.depth,
        ExecMode::Sync,
        false,
        IoEngine::IoUring,
    )?;
    let failure: RefCell<Option<io::Error>> = RefCell::new(None);
    let check = |r: io::Result<()>| {
        if let Err(e) = r {
            failure.borrow_mut().get_or_insert(e);
        }
    };
    let depth = w.depth as u64;
    let (mut a, mut b, mut c, mut d) = (0usize, 0usize, 0usize, 0usize);
    let (mut oa, mut ob, mut oc, mut od) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let rates = best_of(
        timing,
        &mut [
            &mut || {
                a += 1;
                batch_offsets(w, random, a, &mut oa);
                for (k, &o) in oa.iter().enumerate() {
                    check(if w.write {
                        pread.write_from(k, o)
                    } else {
                        pread.read_into(k, o)
                    });
                }
                depth
            },
            &mut || {
                b += 1;
                batch_offsets(w, random, b, &mut ob);
                check(peer.batch(w.write, &ob));
                depth
            },
            &mut || {
                c += 1;
                batch_offsets(w, random, c, &mut oc);
                check(sync.batch(kind, &oc));
                depth
            },
            &mut || {
                d += 1;
                batch_offsets(w, random, d, &mut od);
                check(ours.batch(kind, &od));
                depth
            },
        ],
    );
    if let Some(e) = failure.into_inner() {
        return Err(io::Error::new(e.kind(), format!("{}: {e}", w.name())));
    }
    if !w.write {
        // Every path read the file: the last batch's first buffers agree.
        let mut got = vec![0u8; w.len.min(SMALL)];
        batch_offsets(w, random, 0, &mut oa);
        pread.read_into(0, oa[0])?;
        peer.batch(false, &oa)?;
        sync.batch(kind, &oa)?;
        ours.batch(kind, &oa)?;
        let want = &pread.data()[..got.len()];
        if &peer.data()[..got.len()] != want {
            return Err(io::Error::other("io_uring peer read other bytes"));
        }
        for q in [&sync, &ours] {
            q.data(0, &mut got)?;
            if got != want {
                return Err(io::Error::other("the device read other bytes"));
            }
        }
    }
    let [p, u, s, o] = rates[..] else {
        return Err(io::Error::other("four sides measured"));
    };
    Ok(FioRow {
        workload: w,
        pread: p,
        uring: u,
        ours_sync: s,
        ours_uring: o,
    })
}

/// Formats the table: IOPS (k req/s) and MB/s of each path, and the two
/// ratios.
pub fn format_table(rows: &[FioRow]) -> String {
    let mut out = format!(
        "{:<18} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  {:>11} {:>11}\n",
        "fio-style (k IOPS)",
        "pread",
        "io_uring",
        "ours sync",
        "ours uring",
        "MB/s sync",
        "MB/s uring",
        "sync/pread",
        "uring/uring"
    );
    for r in rows {
        let mb = |x: f64| x * r.workload.len as f64 / 1e6;
        out.push_str(&format!(
            "{:<18} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.0} {:>9.0}  {:>10.2}x {:>10.2}x\n",
            r.workload.name(),
            r.pread / 1e3,
            r.uring / 1e3,
            r.ours_sync / 1e3,
            r.ours_uring / 1e3,
            mb(r.ours_sync),
            mb(r.ours_uring),
            r.ours_sync / r.pread,
            r.ours_uring / r.uring,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_table_has_every_workload_and_path() {
        let rows = run(true).unwrap();
        assert_eq!(rows.len(), workloads().len());
        for r in &rows {
            for x in [r.pread, r.uring, r.ours_sync, r.ours_uring] {
                assert!(x.is_finite() && x > 0.0, "{r:?}");
            }
        }
        let t = format_table(&rows);
        assert_eq!(t.lines().count(), rows.len() + 1);
        assert!(t.contains("randwrite 4K QD32") && t.contains("read 1M QD8"));
    }

    #[test]
    fn an_io_error_is_returned_not_measured() {
        let disk = DiskFile::create().unwrap();
        let mut peer = UringPeer::new(&disk, SMALL, 1).unwrap();
        // Past the end of the file: a short (empty) read.
        assert!(peer.batch(false, &[FILE_SIZE]).is_err());
        let mut q =
            RawQueue::with_engine(&disk, SMALL, 1, ExecMode::Sync, false, IoEngine::IoUring)
                .unwrap();
        assert!(q.batch(VIRTIO_BLK_T_IN, &[FILE_SIZE]).is_err());
    }
}
