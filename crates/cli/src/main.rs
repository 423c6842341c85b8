//! `vmmio`: command-line front end. `vmmio boot` boots Linux on the software RISC-V machine.
//!
//! Thin by design: it parses arguments, reads files and drives the public API of
//! `vmmio-machine`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use clap::{Parser, Subcommand};
use vmmio_machine::{layout, ExitReason, Machine, MachineConfig};

/// Default kernel command line: the serial console, with the SBI console for early output.
const DEFAULT_CMDLINE: &str = "console=ttyS0 earlycon=sbi";

#[derive(Parser, Debug)]
#[command(name = "vmmio", version, about = "virtio over MMIO, both sides")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Boot a RISC-V Linux Image on the software machine; the guest console is stdin/stdout.
    ///
    /// Exit status: 0 when the guest powers off, 2 when it reboots or a limit is hit, 1 on
    /// host errors.
    Boot(BootArgs),
}

#[derive(clap::Args, Debug)]
struct BootArgs {
    /// Linux `Image` to boot. Without it, `guest/build.sh` builds (or finds cached) the default
    /// guest and its `Image` and `initramfs.cpio` are used.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// initramfs (cpio) to pass to the kernel.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 256)]
    mem: u64,
    /// Write one line per executed instruction (and per trap) to this file, or to stderr
    /// when no file is given. Very slow.
    #[arg(long, num_args = 0..=1, default_missing_value = "-")]
    trace: Option<String>,
    /// Stop after this many instructions.
    #[arg(long)]
    max_instructions: Option<u64>,
    /// Stop after this many seconds of wall time.
    #[arg(long)]
    timeout: Option<f64>,
    /// Print instruction count, time and MIPS to stderr at exit.
    #[arg(long)]
    stats: bool,
    /// Do not connect host stdin to the guest console.
    #[arg(long)]
    no_stdin: bool,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match cli.command {
        Cmd::Boot(args) => match boot(&args) {
            Ok(ExitReason::PowerOff) => ExitCode::SUCCESS,
            Ok(reason) => {
                eprintln!("vmmio: guest stopped: {reason:?}");
                ExitCode::from(2)
            }
            Err(e) => {
                eprintln!("vmmio: error: {e}");
                let mut source = e.source();
                while let Some(s) = source {
                    eprintln!("  caused by: {s}");
                    source = s.source();
                }
                ExitCode::from(1)
            }
        },
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs `guest/build.sh` and returns the directory its last stdout line names.
fn build_default_guest() -> Result<PathBuf, BoxError> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest/build.sh");
    eprintln!("vmmio: no --kernel given, running {}", script.display());
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed: {}", script.display(), out.status).into());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or("guest/build.sh printed no output directory")?;
    Ok(PathBuf::from(dir.trim()))
}

fn read(path: &Path) -> Result<Vec<u8>, BoxError> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()).into())
}

fn boot(args: &BootArgs) -> Result<ExitReason, BoxError> {
    let (kernel_path, initrd_path) = match &args.kernel {
        Some(k) => (k.clone(), args.initrd.clone()),
        None => {
            let dir = build_default_guest()?;
            let initrd = args
                .initrd
                .clone()
                .unwrap_or_else(|| dir.join("initramfs.cpio"));
            (dir.join("Image"), Some(initrd))
        }
    };
    let kernel = read(&kernel_path)?;
    let initrd = initrd_path.as_deref().map(read).transpose()?;

    let ram_size = args
        .mem
        .checked_mul(1 << 20)
        .filter(|&s| s <= layout::MAX_RAM_SIZE)
        .ok_or("--mem is too large")?;
    let trace: Option<Box<dyn Write + Send>> = match args.trace.as_deref() {
        None => None,
        Some("-") => Some(Box::new(BufWriter::new(std::io::stderr()))),
        Some(path) => Some(Box::new(BufWriter::new(
            File::create(path).map_err(|e| format!("cannot create {path}: {e}"))?,
        ))),
    };
    let timeout = args
        .timeout
        .map(Duration::try_from_secs_f64)
        .transpose()
        .map_err(|e| format!("bad --timeout: {e}"))?;
    let mut machine = Machine::new(MachineConfig {
        ram_size,
        console: Box::new(std::io::stdout()),
        stdin: !args.no_stdin,
        trace,
        instruction_limit: args.max_instructions,
        timeout,
    })?;
    machine.load_linux(&kernel, initrd.as_deref(), &args.cmdline)?;
    let reason = machine.run()?;
    if args.stats {
        let n = machine.instructions_retired();
        let secs = machine.run_time().as_secs_f64();
        let idle = machine.idle_time().as_secs_f64();
        let busy = (secs - idle).max(1e-9);
        eprintln!(
            "vmmio: {n} instructions in {secs:.2} s ({idle:.2} s idle in WFI): {:.1} MIPS while busy",
            n as f64 / busy / 1e6
        );
    }
    Ok(reason)
}
