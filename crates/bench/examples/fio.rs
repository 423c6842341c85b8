//! Prints the fio-style table of the block engines (the second table of
//! `vmmio bench`): `cargo run --release -p vmmio-bench --example fio
//! [-- --quick]`.

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    match vmmio_bench::fio::run(quick) {
        Ok(rows) => print!("{}", vmmio_bench::fio::format_table(&rows)),
        Err(e) => {
            eprintln!("fio table failed: {e}");
            std::process::exit(1);
        }
    }
}
