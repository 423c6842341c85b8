//! A quick side-by-side table of every workload, with a plain timing loop
//! (no criterion): what `vmmio bench` prints.
//!
//! Each measure runs ours and the peer alternately, a few rounds each of
//! about `budget / rounds`, and keeps the best rate of each: on a shared,
//! noisy machine the best round is the least disturbed one, and
//! alternating exposes both sides to the same disturbances.

use std::cell::RefCell;
use std::hint::black_box;
use std::io;
use std::time::{Duration, Instant};

use vmmio_device::ExecMode;

use crate::block::{
    random_offsets, BlockApi, BlockApiDma, DiskFile, Pread, RawQueue, DEPTH, FILE_SIZE, LARGE,
    OFFSETS, SMALL,
};
use crate::net::{NetLoop, SocketPair};
use crate::packed::OursPacked;
use crate::queue::{self, QueueBench, Shape};

/// One line of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// What was measured.
    pub measure: String,
    /// Our figure, in `unit`.
    pub ours: f64,
    /// The peer's figure, in `unit`, when the measure has a peer.
    pub peer: Option<f64>,
    /// `ours / peer` when both are rates (higher is better for us).
    pub ratio: Option<f64>,
    /// The unit of `ours` and `peer`.
    pub unit: &'static str,
}

impl Row {
    fn compared(measure: String, ours: f64, peer: f64, unit: &'static str) -> Self {
        Self {
            measure,
            ours,
            peer: Some(peer),
            ratio: Some(ours / peer),
            unit,
        }
    }

    fn alone(measure: String, ours: f64, unit: &'static str) -> Self {
        Self {
            measure,
            ours,
            peer: None,
            ratio: None,
            unit,
        }
    }
}

/// How long each side of a measure runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    /// Length of one round.
    pub(crate) round: Duration,
    /// Rounds per side.
    pub(crate) rounds: u32,
}

impl Timing {
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            Self {
                round: Duration::from_millis(40),
                rounds: 3,
            }
        } else {
            Self {
                round: Duration::from_millis(100),
                rounds: 7,
            }
        }
    }
}

/// Runs `f` (which returns the units of work it did) for at least
/// `round`, returns units per second.
pub(crate) fn rate(round: Duration, f: &mut dyn FnMut() -> u64) -> f64 {
    let start = Instant::now();
    let mut units = 0u64;
    loop {
        units += f();
        let elapsed = start.elapsed();
        if elapsed >= round {
            return units as f64 / elapsed.as_secs_f64();
        }
    }
}

/// Best rate of `ours` and of `peer`, measured in alternating rounds after
/// one warm-up round each.
fn compare(
    timing: Timing,
    ours: &mut dyn FnMut() -> u64,
    peer: &mut dyn FnMut() -> u64,
) -> (f64, f64) {
    let warm = timing.round / 4;
    rate(warm, ours);
    rate(warm, peer);
    let (mut a, mut b) = (0f64, 0f64);
    for _ in 0..timing.rounds {
        a = a.max(rate(timing.round, ours));
        b = b.max(rate(timing.round, peer));
    }
    (a, b)
}

/// Runs every workload and returns the table: the queue against
/// virtio-queue (both shapes), then the loopback block path against
/// `pread`/`pwrite` (4 KiB random reads at depth 1 and 32, 1 MiB sequential
/// reads and writes), then loopback network frames of 64 and 1514 bytes
/// against a Unix socket pair. `quick` shortens each measure (about 0.3 s instead
/// of 1.5 s per measure; about 3 s or 15 s in all, plus writing a 64 MiB
/// scratch file).
///
/// # Panics
/// When the scratch file cannot be created in the temporary directory, or
/// a loopback request fails (a bug); [`try_run`] returns those instead.
pub fn run(quick: bool) -> Vec<Row> {
    match try_run(quick) {
        Ok(rows) => rows,
        Err(e) => panic!("vmmio bench: {e}"),
    }
}

/// As [`run`], returning failures.
///
/// # Errors
/// Creating the scratch file in the temporary directory, or a loopback
/// request failing (a bug).
pub fn try_run(quick: bool) -> io::Result<Vec<Row>> {
    let timing = Timing::new(quick);
    let mut rows = Vec::new();

    for shape in [Shape::OneDesc, Shape::ThreeDesc] {
        if !queue::same_used_ring(shape) {
            return Err(io::Error::other("the two queues disagree"));
        }
        let mut ours = queue::Ours::new(shape);
        let mut peer = queue::Peer::new(shape);
        let (a, b) = compare(timing, &mut || ours.batch(), &mut || peer.batch());
        rows.push(Row::compared(
            format!(
                "queue pop+add_used, {}-descriptor chains, batch {} (peer: virtio-queue)",
                shape.descriptors().len(),
                queue::BATCH
            ),
            a / 1e6,
            b / 1e6,
            "M chains/s",
        ));
    }
    // The same workload on a packed ring, against ours on a split ring.
    for shape in [Shape::OneDesc, Shape::ThreeDesc] {
        let mut packed = OursPacked::new(shape);
        let mut split = queue::Ours::new(shape);
        let (a, b) = compare(timing, &mut || packed.batch(), &mut || split.batch());
        rows.push(Row::compared(
            format!(
                "queue pop+add_used, {}-descriptor chains, batch {}, packed ring (peer: our split ring)",
                shape.descriptors().len(),
                queue::BATCH
            ),
            a / 1e6,
            b / 1e6,
            "M chains/s",
        ));
    }

    let disk = DiskFile::create()?;
    let offsets = random_offsets(OFFSETS);
    // The first error of either side, ours or the peer's: a request that
    // fails returns at once and would otherwise show as a throughput.
    let failure: RefCell<Option<io::Error>> = RefCell::new(None);
    let check = |r: io::Result<()>| {
        if let Err(e) = r {
            failure.borrow_mut().get_or_insert(e);
        }
    };

    // 4 KiB random reads, depth 1.
    {
        let mut api = BlockApi::new(&disk, SMALL)?;
        let mut raw = RawQueue::new(&disk, SMALL, 1)?;
        let mut p = Pread::new(&disk, SMALL)?;
        let (mut i, mut j, mut k) = (0usize, 0usize, 0usize);
        let (a, b) = compare(
            timing,
            &mut || {
                i = (i + 1) % OFFSETS;
                check(api.read(offsets[i]));
                1
            },
            &mut || {
                j = (j + 1) % OFFSETS;
                check(black_box(p.read(offsets[j])));
                1
            },
        );
        let (c, d) = compare(
            timing,
            &mut || {
                k = (k + 1) % OFFSETS;
                check(raw.read(&offsets[k..k + 1]));
                1
            },
            &mut || {
                j = (j + 1) % OFFSETS;
                check(black_box(p.read(offsets[j])));
                1
            },
        );
        rows.push(Row::compared(
            "blk 4K random read QD1, Block API (peer: pread)".into(),
            a / 1e3,
            b / 1e3,
            "k req/s",
        ));
        rows.push(Row::alone(
            "  overhead per request over pread".into(),
            1e9 / a - 1e9 / b,
            "ns/req",
        ));
        rows.push(Row::compared(
            "blk 4K random read QD1, raw queue (peer: pread)".into(),
            c / 1e3,
            d / 1e3,
            "k req/s",
        ));
        rows.push(Row::alone(
            "  overhead per request over pread".into(),
            1e9 / c - 1e9 / d,
            "ns/req",
        ));
    }

    // 4 KiB random reads, depth 32: one kick per 32 requests.
    {
        let mut raw = RawQueue::new(&disk, SMALL, DEPTH)?;
        let mut p = Pread::with_buffers(&disk, SMALL, DEPTH)?;
        let (mut i, mut j) = (0usize, 0usize);
        let (a, b) = compare(
            timing,
            &mut || {
                i = (i + DEPTH) % OFFSETS;
                check(raw.read(&offsets[i..i + DEPTH]));
                DEPTH as u64
            },
            &mut || {
                j = (j + DEPTH) % OFFSETS;
                for (k, &o) in offsets[j..j + DEPTH].iter().enumerate() {
                    check(black_box(p.read_into(k, o)));
                }
                DEPTH as u64
            },
        );
        rows.push(Row::compared(
            "blk 4K random read QD32, raw queue (peer: pread)".into(),
            a / 1e3,
            b / 1e3,
            "k req/s",
        ));
        rows.push(Row::alone(
            "  overhead per request over pread".into(),
            1e9 / a - 1e9 / b,
            "ns/req",
        ));
    }

    // Packed ring against split ring, same raw queue, depth 1 and 32.
    for depth in [1, DEPTH] {
        let mut packed = RawQueue::with_ring(&disk, SMALL, depth, ExecMode::Sync, true)?;
        let mut split = RawQueue::new(&disk, SMALL, depth)?;
        let (mut i, mut j) = (0usize, 0usize);
        let (a, b) = compare(
            timing,
            &mut || {
                i = (i + depth) % OFFSETS;
                check(packed.read(&offsets[i..i + depth]));
                depth as u64
            },
            &mut || {
                j = (j + depth) % OFFSETS;
                check(split.read(&offsets[j..j + depth]));
                depth as u64
            },
        );
        rows.push(Row::compared(
            format!("blk 4K random read QD{depth}, raw queue, packed ring (peer: split ring)"),
            a / 1e3,
            b / 1e3,
            "k req/s",
        ));
    }

    // The worker execution model, same raw queue: each batch pays a
    // cross-thread wake-up (eventfd, epoll) and the driver polls for the
    // worker's completions. Depth 1 shows the wake-up's latency, depth 32
    // spreads it over 32 requests.
    for depth in [1, DEPTH] {
        let mut raw = RawQueue::new_in(&disk, SMALL, depth, ExecMode::Worker)?;
        let mut p = Pread::with_buffers(&disk, SMALL, depth)?;
        let (mut i, mut j) = (0usize, 0usize);
        let (a, b) = compare(
            timing,
            &mut || {
                i = (i + depth) % OFFSETS;
                check(raw.read(&offsets[i..i + depth]));
                depth as u64
            },
            &mut || {
                j = (j + depth) % OFFSETS;
                for (k, &o) in offsets[j..j + depth].iter().enumerate() {
                    check(black_box(p.read_into(k, o)));
                }
                depth as u64
            },
        );
        rows.push(Row::compared(
            format!("blk 4K random read QD{depth}, raw queue, worker mode (peer: pread)"),
            a / 1e3,
            b / 1e3,
            "k req/s",
        ));
        rows.push(Row::alone(
            "  overhead per request over pread".into(),
            1e9 / a - 1e9 / b,
            "ns/req",
        ));
    }

    // 1 MiB sequential reads and writes.
    let positions = FILE_SIZE / LARGE as u64;
    for write in [false, true] {
        let mut raw = RawQueue::new(&disk, LARGE, 1)?;
        let mut api = BlockApi::new(&disk, LARGE)?;
        let mut zero_copy = BlockApiDma::new(&disk, LARGE)?;
        let mut p = Pread::new(&disk, LARGE)?;
        let (mut i, mut j, mut k, mut z) = (0u64, 0u64, 0u64, 0u64);
        let bytes = LARGE as u64;
        let mut ours = || {
            i = (i + 1) % positions;
            let at = [i * bytes];
            check(if write { raw.write(&at) } else { raw.read(&at) });
            bytes
        };
        let mut peer = || {
            j = (j + 1) % positions;
            let r = if write {
                p.write(j * bytes)
            } else {
                p.read(j * bytes)
            };
            check(black_box(r));
            bytes
        };
        let (a, b) = compare(timing, &mut ours, &mut peer);
        let (c, d) = compare(
            timing,
            &mut || {
                k = (k + 1) % positions;
                let r = if write {
                    api.write(k * bytes)
                } else {
                    api.read(k * bytes)
                };
                check(black_box(r));
                bytes
            },
            &mut peer,
        );
        let (e, f) = compare(
            timing,
            &mut || {
                z = (z + 1) % positions;
                let r = if write {
                    zero_copy.write(z * bytes)
                } else {
                    zero_copy.read(z * bytes)
                };
                check(black_box(r));
                bytes
            },
            &mut peer,
        );
        let (what, peer_name) = if write {
            ("write", "pwrite")
        } else {
            ("read", "pread")
        };
        rows.push(Row::compared(
            format!("blk 1M sequential {what}, raw queue (peer: {peer_name})"),
            a / 1e9,
            b / 1e9,
            "GB/s",
        ));
        rows.push(Row::compared(
            format!("blk 1M sequential {what}, Block API (peer: {peer_name})"),
            c / 1e9,
            d / 1e9,
            "GB/s",
        ));
        rows.push(Row::compared(
            format!("blk 1M sequential {what}, Block API zero-copy (peer: {peer_name})"),
            e / 1e9,
            f / 1e9,
            "GB/s",
        ));
    }

    // Network frames, 64 and 1514 bytes (a full 1500-byte-MTU frame).
    for len in [64usize, 1514] {
        let mut ours = NetLoop::new(len)?;
        let mut peer = SocketPair::new(len)?;
        let (a, b) = compare(
            timing,
            &mut || {
                let r = ours.batch();
                let n = *r.as_ref().unwrap_or(&0);
                check(r.map(|_| ()));
                n.max(1)
            },
            &mut || {
                let r = peer.batch();
                let n = *r.as_ref().unwrap_or(&0);
                check(r.map(|_| ()));
                n.max(1)
            },
        );
        rows.push(Row::compared(
            format!("net loopback {len}-byte frames, driver+device pair (peer: Unix socketpair)"),
            a / 1e6,
            b / 1e6,
            "M frames/s",
        ));
        let bits = (len * 8) as f64;
        rows.push(Row::compared(
            format!("net loopback {len}-byte frames (peer: Unix socketpair)"),
            a * bits / 1e9,
            b * bits / 1e9,
            "Gbit/s",
        ));
    }

    if let Some(e) = failure.into_inner() {
        return Err(e);
    }
    vsock_rows(timing, &mut rows)?;
    Ok(rows)
}

/// Formats `rows` as a table with the columns measure, ours, peer, ratio,
/// unit.
pub fn format_table(rows: &[Row]) -> String {
    let width = rows
        .iter()
        .map(|r| r.measure.len())
        .chain(["measure".len()])
        .max()
        .unwrap_or(0);
    let mut out = format!(
        "{:<width$}  {:>10}  {:>10}  {:>7}  unit\n",
        "measure", "ours", "peer", "ratio"
    );
    for r in rows {
        let peer = r.peer.map_or("-".to_string(), num);
        let ratio = r.ratio.map_or("-".to_string(), |x| format!("{x:.2}x"));
        out.push_str(&format!(
            "{:<width$}  {:>10}  {:>10}  {:>7}  {}\n",
            r.measure,
            num(r.ours),
            peer,
            ratio,
            r.unit
        ));
    }
    out
}

/// Three significant digits, no exponent.
fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// Prints [`format_table`] of `rows` to standard output.
pub fn print_table(rows: &[Row]) {
    print!("{}", format_table(rows));
}

/// The vsock rows: one connection's guest-to-host throughput and the
/// connection setup rate, each against a plain Unix socket pair.
fn vsock_rows(timing: Timing, rows: &mut Vec<Row>) -> io::Result<()> {
    use crate::vsock::{pair_setup, pair_transfer, Loop, TRANSFER};

    let failure: RefCell<Option<io::Error>> = RefCell::new(None);
    let check = |r: io::Result<u64>| match r {
        Ok(n) => n,
        Err(e) => {
            failure.borrow_mut().get_or_insert(e);
            // Count nothing; the error is returned below.
            0
        }
    };
    let data: Vec<u8> = (0..TRANSFER).map(|i| (i % 251) as u8).collect();
    let mut lp = Loop::new()?;
    let (id, mut host) = lp.connect()?;
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    let (x, y) = compare(
        timing,
        &mut || check(lp.transfer(id, &mut host, &data)),
        &mut || check(pair_transfer(&mut a, &mut b, &data)),
    );
    if let Some(e) = failure.borrow_mut().take() {
        return Err(e);
    }
    rows.push(Row::compared(
        "vsock loopback, one connection guest->host (peer: Unix socket pair)".into(),
        x / 1e6,
        y / 1e6,
        "MB/s",
    ));
    lp.close(id)?;

    let dir = std::env::temp_dir().join(format!("vmmio-bench-unix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("l.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    let (x, y) = compare(timing, &mut || check(lp.setup()), &mut || {
        check(pair_setup(&listener, &path))
    });
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(e) = failure.borrow_mut().take() {
        return Err(e);
    }
    rows.push(Row::compared(
        "vsock connection setup+close (peer: Unix connect+accept)".into(),
        x / 1e3,
        y / 1e3,
        "k conn/s",
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_every_column_and_row() {
        let rows = vec![
            Row::compared("a".into(), 2.0, 1.0, "M chains/s"),
            Row::alone("b".into(), 123.4, "ns/req"),
        ];
        let t = format_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("measure"));
        assert!(lines[1].contains("2.00x") && lines[1].ends_with("M chains/s"));
        assert!(lines[2].contains(" - ") && lines[2].contains("123"));
    }

    #[test]
    fn quick_run_produces_every_row() {
        let rows = try_run(true).unwrap();
        assert_eq!(rows.len(), 28);
        assert!(rows.iter().all(|r| r.ours.is_finite()));
    }
}
