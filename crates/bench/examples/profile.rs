//! Runs one workload in a loop for profiling (`perf record`, callgrind):
//! `cargo run --release -p vmmio-bench --example profile -- WORKLOAD [SECONDS | Nx]`
//! (`Nx`: exactly N iterations, for instruction counts) with WORKLOAD one of `queue1`, `queue3`, `peer1`, `peer3`,
//! `packed1`, `packed3` (the packed ring), `qd1-api`, `qd1-raw`, `qd1-packed`, `qd32`, `qd32-packed`, `pread`, `read1m`,
//! `write1m`.

use std::time::{Duration, Instant};

use vmmio_bench::block::{
    random_offsets, BlockApi, DiskFile, Pread, RawQueue, DEPTH, FILE_SIZE, LARGE, OFFSETS, SMALL,
};
use vmmio_bench::packed::OursPacked;
use vmmio_bench::queue::{Ours, Peer, QueueBench, Shape};
use vmmio_device::ExecMode;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "qd1-raw".into());
    let limit = args.next().unwrap_or_else(|| "5".into());
    let (secs, iterations) = match limit.strip_suffix('x') {
        Some(n) => (f64::INFINITY, n.parse().unwrap_or(1000)),
        None => (limit.parse().unwrap_or(5.0), usize::MAX),
    };
    let disk = DiskFile::create()?;
    let offsets = random_offsets(OFFSETS);
    let mut step: Box<dyn FnMut(usize) -> u64> = match what.as_str() {
        "queue1" | "queue3" | "peer1" | "peer3" | "packed1" | "packed3" => {
            let shape = if what.ends_with('1') {
                Shape::OneDesc
            } else {
                Shape::ThreeDesc
            };
            let mut q: Box<dyn QueueBench> = if what.starts_with("queue") {
                Box::new(Ours::new(shape))
            } else if what.starts_with("packed") {
                Box::new(OursPacked::new(shape))
            } else {
                Box::new(Peer::new(shape))
            };
            Box::new(move |_| q.batch())
        }
        "qd1-api" => {
            let mut api = BlockApi::new(&disk, SMALL)?;
            Box::new(move |i| {
                api.read(offsets[i % OFFSETS]).expect("read");
                1
            })
        }
        "qd1-raw" => {
            let mut raw = RawQueue::new(&disk, SMALL, 1)?;
            Box::new(move |i| {
                let i = i % OFFSETS;
                raw.read(&offsets[i..i + 1]).expect("read");
                1
            })
        }
        "qd1-packed" => {
            let mut raw = RawQueue::with_ring(&disk, SMALL, 1, ExecMode::Sync, true)?;
            Box::new(move |i| {
                let i = i % OFFSETS;
                raw.read(&offsets[i..i + 1]).expect("read");
                1
            })
        }
        "qd32" | "qd32-packed" => {
            let packed = what == "qd32-packed";
            let mut raw = RawQueue::with_ring(&disk, SMALL, DEPTH, ExecMode::Sync, packed)?;
            Box::new(move |i| {
                let i = i * DEPTH % OFFSETS;
                raw.read(&offsets[i..i + DEPTH]).expect("read");
                DEPTH as u64
            })
        }
        "pread" => {
            let mut p = Pread::new(&disk, SMALL)?;
            Box::new(move |i| {
                p.read(offsets[i % OFFSETS]).expect("pread");
                1
            })
        }
        "read1m" | "write1m" => {
            let write = what == "write1m";
            let mut raw = RawQueue::new(&disk, LARGE, 1)?;
            let n = FILE_SIZE / LARGE as u64;
            Box::new(move |i| {
                let at = [(i as u64 % n) * LARGE as u64];
                if write { raw.write(&at) } else { raw.read(&at) }.expect("request");
                1
            })
        }
        other => {
            eprintln!("unknown workload {other}");
            std::process::exit(2);
        }
    };
    let start = Instant::now();
    let (mut i, mut units) = (0usize, 0u64);
    let budget = Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX);
    while i < iterations && start.elapsed() < budget {
        units += step(i);
        i += 1;
    }
    let rate = units as f64 / start.elapsed().as_secs_f64();
    println!("{what}: {units} units, {rate:.0} units/s");
    Ok(())
}
