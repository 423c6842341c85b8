//! The loopback block path against pread/pwrite of the same file, one
//! group per workload: `cargo bench -p vmmio-bench --bench block`. See
//! `vmmio_bench::block` for what each side does.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vmmio_bench::block::{
    random_offsets, BlockApi, DiskFile, Pread, RawQueue, DEPTH, FILE_SIZE, LARGE, OFFSETS, SMALL,
};

fn small(c: &mut Criterion, disk: &DiskFile) {
    let offsets = random_offsets(OFFSETS);
    let mut g = c.benchmark_group("blk/4k-randread-qd1");
    g.throughput(Throughput::Elements(1));
    let mut api = BlockApi::new(disk, SMALL).expect("block driver");
    let mut i = 0;
    g.bench_function("vmmio-block-api", |b| {
        b.iter(|| {
            i = (i + 1) % OFFSETS;
            api.read(offsets[i]).expect("read")
        })
    });
    let mut raw = RawQueue::new(disk, SMALL, 1).expect("block queue");
    g.bench_function("vmmio-raw-queue", |b| {
        b.iter(|| {
            i = (i + 1) % OFFSETS;
            raw.read(&offsets[i..i + 1]).expect("read")
        })
    });
    let mut p = Pread::new(disk, SMALL).expect("open");
    g.bench_function("pread", |b| {
        b.iter(|| {
            i = (i + 1) % OFFSETS;
            p.read(offsets[i]).expect("pread")
        })
    });
    g.finish();

    let mut g = c.benchmark_group("blk/4k-randread-qd32");
    g.throughput(Throughput::Elements(DEPTH as u64));
    let mut raw = RawQueue::new(disk, SMALL, DEPTH).expect("block queue");
    // A multiple of DEPTH, so that `i + DEPTH <= OFFSETS`.
    let mut i = 0;
    g.bench_function("vmmio-raw-queue", |b| {
        b.iter(|| {
            i = (i + DEPTH) % OFFSETS;
            raw.read(&offsets[i..i + DEPTH]).expect("read")
        })
    });
    let mut p = Pread::with_buffers(disk, SMALL, DEPTH).expect("open");
    g.bench_function("pread", |b| {
        b.iter(|| {
            i = (i + DEPTH) % OFFSETS;
            for (k, &o) in offsets[i..i + DEPTH].iter().enumerate() {
                p.read_into(k, o).expect("pread");
            }
        })
    });
    g.finish();
}

fn large(c: &mut Criterion, disk: &DiskFile) {
    let positions = FILE_SIZE / LARGE as u64;
    let bytes = LARGE as u64;
    for write in [false, true] {
        let name = if write {
            "blk/1m-seqwrite"
        } else {
            "blk/1m-seqread"
        };
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(bytes));
        let mut i = 0u64;
        let mut raw = RawQueue::new(disk, LARGE, 1).expect("block queue");
        g.bench_function("vmmio-raw-queue", |b| {
            b.iter(|| {
                i = (i + 1) % positions;
                let at = [i * bytes];
                if write { raw.write(&at) } else { raw.read(&at) }.expect("request")
            })
        });
        let mut api = BlockApi::new(disk, LARGE).expect("block driver");
        g.bench_function("vmmio-block-api", |b| {
            b.iter(|| {
                i = (i + 1) % positions;
                if write {
                    api.write(i * bytes)
                } else {
                    api.read(i * bytes)
                }
                .expect("request")
            })
        });
        let mut p = Pread::new(disk, LARGE).expect("open");
        g.bench_function(if write { "pwrite" } else { "pread" }, |b| {
            b.iter(|| {
                i = (i + 1) % positions;
                if write {
                    p.write(i * bytes)
                } else {
                    p.read(i * bytes)
                }
                .expect("io")
            })
        });
        g.finish();
    }
}

fn block(c: &mut Criterion) {
    let disk = DiskFile::create().expect("scratch disk file");
    small(c, &disk);
    large(c, &disk);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(15)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = block
}
criterion_main!(benches);
