//! Device-role split queue, vmmio against virtio-queue in one group per
//! chain shape: `cargo bench -p vmmio-bench --bench queue`. Throughput is
//! in chains (elements); see `vmmio_bench::queue` for the workload.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vmmio_bench::queue::{Ours, Peer, QueueBench, Shape, BATCH};

fn queues(c: &mut Criterion) {
    for shape in [Shape::OneDesc, Shape::ThreeDesc] {
        let mut g = c.benchmark_group(format!("queue/{}", shape.label()));
        g.throughput(Throughput::Elements(u64::from(BATCH)));
        let mut ours = Ours::new(shape);
        g.bench_function("vmmio", |b| b.iter(|| ours.batch()));
        let mut peer = Peer::new(shape);
        g.bench_function("virtio-queue", |b| b.iter(|| peer.batch()));
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = queues
}
criterion_main!(benches);
