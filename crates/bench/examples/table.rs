//! Runs every benchmark workload once and prints the side-by-side table:
//! `cargo run --release -p vmmio-bench --example table`.

fn main() {
    let rows = vmmio_bench::run(false);
    vmmio_bench::print_table(&rows);
}
