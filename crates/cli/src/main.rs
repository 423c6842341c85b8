//! `vmmio`: command-line front end. `vmmio boot` boots Linux on the software RISC-V machine
//! with vmmio's virtio-mmio devices attached.
//!
//! Thin by design: it parses arguments, reads files, builds devices from `vmmio-devices` and
//! drives the public API of `vmmio-machine`.

mod control;
mod output;
mod terminal;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vmmio_devices::net::{Net, Stream, Tap};
use vmmio_devices::vsock::{Vsock, VsockOptions};
use vmmio_devices::{Block, BlockOptions, Console, IoEngine, Rng};
use vmmio_machine::{
    layout, ExecMode, ExitReason, Machine, MachineConfig, Profile, SymbolMap, TransportVersion,
    VirtioHandle,
};

use control::{Controls, DiskControl};
use output::{FailWatch, LinePrefixer};

/// Start of the default kernel command line: the serial console, the SBI console for early
/// output, and a reboot (which ends the run) instead of a hang on panic. `vmmio.tests=` for
/// the attached devices follows.
const BASE_CMDLINE: &str = "console=ttyS0 earlycon=sbi panic=-1";

/// Added to the Debian guest's default command line: its kernel has no SBI console (hvc0),
/// so the console device's port is /dev/hvc0 for the init's hvc test. `cryptomgr.notests`:
/// the kernel's crypto self-tests (RSA/ECDSA/ECDH private-key operations, built in because
/// the kernel is FIPS-capable) were half of the boot's guest instructions (1.15 of 2.3
/// billion, `vmmio profile`); they check the crypto code on the CPU, which is not what this
/// guest tests. `initcall_blacklist=jent_mod_init`: the jitter entropy source's start-up
/// health test times thousands of memory accesses and SHA-3 rounds (15% of what was left,
/// 0.17 billion) to measure CPU timing jitter an interpreter does not have; the kernel's
/// RNG is seeded from /chosen/rng-seed and virtio-rng. Set `--cmdline` to boot without them.
const DEBIAN_CMDLINE: &str =
    "vmmio.hvc=/dev/hvc0 cryptomgr.notests initcall_blacklist=jent_mod_init";

/// What `--shell` adds to the kernel command line: the guest's init starts a shell on the
/// console instead of its tests (guest/debian/init).
const SHELL_CMDLINE: &str = "vmmio.shell";

/// Size of the default scratch disk in bytes (sparse, deleted at exit).
const SCRATCH_DISK_BYTES: u64 = 64 << 20;

/// Prefix of each virtio-console output line on stdout.
const CONSOLE_PREFIX: &str = "virtio-console| ";

/// Exit status when the guest powered off but its init printed a FAIL line.
const EXIT_GUEST_FAIL: u8 = 3;

#[derive(Parser, Debug)]
#[command(name = "vmmio", version, about = "virtio over MMIO, both sides")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Boot a RISC-V Linux Image on the software machine; the guest console (UART) is
    /// stdin/stdout.
    ///
    /// Attached by default, as virtio-mmio windows (Version 2, or 1 with --legacy): a block
    /// device on a fresh 64 MiB scratch image (deleted at exit; --disk replaces it), an
    /// entropy device (--no-rng) and a console device whose output goes to stdout, each
    /// line prefixed with "virtio-console| " (or to --console-out). The default command
    /// line asks the guest's init to test them (vmmio.tests=virtio,blk,rng,hvc, dropping
    /// what is not attached).
    ///
    /// Exit status: 0 when the guest powers off and no "vmmio-init: ... FAIL" line appeared
    /// on the console (or the user ended the machine with Ctrl-A x), 3 when it powers off
    /// after such a line, 2 when it reboots (also on a kernel panic) or a limit is hit, 1 on
    /// host errors, 128+N when signal N ended it.
    Boot(Box<BootArgs>),
    /// Measure vmmio against the peers a user would pick instead, in one run, and print
    /// one table (measure, ours, peer, ratio, unit): the device-role split queue against
    /// rust-vmm's virtio-queue, and loopback block I/O (our driver, transport and block
    /// device over a page-cached file) against pread/pwrite of the same file, one loopback
    /// vsock connection (throughput, setup rate) against a Unix socket pair, and loopback
    /// network frames (two drivers and two net devices joined by a Unix socket pair) against
    /// the same frames over a plain socket pair. The
    /// criterion benches (`cargo bench -p vmmio-bench`) measure the same workloads.
    Bench(BenchArgs),
    /// Print the kernel functions a `vmmio boot --profile` histogram spent its samples in,
    /// most first, with their share: each S-mode pc is mapped to the function holding it
    /// with the kernel's symbols in System.map format (`scripts/debian-kallsyms.sh` makes
    /// and prints the Debian kernel's, from its /proc/kallsyms); U-mode samples count as "[user]", S-mode pcs outside the map (modules)
    /// as "[unknown]".
    Profile(ProfileArgs),
}

#[derive(clap::Args, Debug)]
struct ProfileArgs {
    /// The histogram `vmmio boot --profile FILE` wrote.
    file: PathBuf,
    /// The kernel's symbols, System.map format ("<hex address> <type> <name>"; text
    /// symbols are used).
    #[arg(long, value_name = "FILE")]
    system_map: PathBuf,
    /// How many functions to print.
    #[arg(long, default_value_t = 20)]
    top: usize,
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Short measurements (about 8 s in all instead of about 40 s): a smoke run,
    /// noisier figures. The fio-style table of the block engines follows the main one.
    #[arg(long)]
    quick: bool,
}

/// The guests the repository makes (`--distro`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Distro {
    /// The small kernel `guest/build.sh` builds, with a test program as init.
    Default,
    /// Debian's riscv64 kernel package and busybox-static (`scripts/debian-guest.sh`).
    Debian,
}

#[derive(clap::Args, Debug)]
struct BootArgs {
    /// Linux `Image` to boot. Without it, the guest `--distro` names is used (built or
    /// fetched on first use, cached afterwards).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// The guest to boot when no --kernel is given. "default": the small kernel
    /// `guest/build.sh` builds from source (minutes, once) with a test program as init.
    /// "debian": Debian trixie's own riscv64 kernel package and busybox-static, fetched
    /// through apt by `scripts/debian-guest.sh` (about 115 MB, once; cached under
    /// ~/.cache/vmmio/debian), whose init loads the virtio modules and runs the same tests,
    /// or a shell with --shell.
    #[arg(long, value_enum, default_value_t = Distro::Default)]
    distro: Distro,
    /// An interactive shell on the console: asks the guest's init for it ("vmmio.shell" on
    /// the kernel command line; the Debian guest's init honours it) and, when stdin is a
    /// terminal, puts it in raw mode so that line editing, Ctrl-C and job control work in
    /// the guest. Ctrl-A x ends the machine, Ctrl-A Ctrl-A sends Ctrl-A. The terminal is
    /// restored on every exit.
    #[arg(long, conflicts_with = "no_stdin")]
    shell: bool,
    /// initramfs (cpio) to pass to the kernel.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line. Default: "console=ttyS0 earlycon=sbi panic=-1
    /// vmmio.tests=virtio,blk,rng,hvc" without the tests of devices not attached.
    #[arg(long)]
    cmdline: Option<String>,
    /// Appended to the kernel command line, e.g. "vmmio.tests=virtio,blkreqs
    /// vmmio.blkreqs=35000" (the init takes the last vmmio.tests=).
    #[arg(long)]
    append: Option<String>,
    /// Attach a block device on this raw image file; ",ro" makes it read-only. Repeatable:
    /// the first is the guest's /dev/vda. Replaces the default scratch disk.
    #[arg(long, value_name = "PATH[,ro]")]
    disk: Vec<String>,
    /// No block device at all (not even the scratch disk).
    #[arg(long, conflicts_with = "disk")]
    no_disk: bool,
    /// No entropy device.
    #[arg(long)]
    no_rng: bool,
    /// No console device.
    #[arg(long)]
    no_console: bool,
    /// Write the console device's output to this file, unprefixed, instead of stdout.
    #[arg(long, value_name = "PATH")]
    console_out: Option<PathBuf>,
    /// Attach a virtio-vsock device whose host side is Unix sockets, Firecracker's "hybrid
    /// vsock" convention: the device listens on PATH; a host program connects to PATH,
    /// writes "CONNECT <port>\n" and, once the guest listening on <port> accepted, reads
    /// "OK <host_port>\n", after which the stream is the connection. A guest connecting
    /// to CID 2 port P reaches the host program listening on "PATH_P". PATH must not exist;
    /// it is removed at exit.
    #[arg(long, value_name = "PATH")]
    vsock: Option<PathBuf>,
    /// The guest's vsock context ID (3..=4294967294).
    #[arg(long, value_name = "CID", default_value_t = 3, requires = "vsock")]
    vsock_cid: u64,
    /// Attach a virtio-net device (the guest's eth0). "stream:PATH" connects to the Unix
    /// socket listening at PATH and exchanges Ethernet frames each preceded by its length
    /// as a 4-byte big-endian number: the framing of QEMU's "-netdev stream", so the peer
    /// can be QEMU (-netdev stream,server=on,addr.type=unix,addr.path=PATH), a TCP/IP stack
    /// in a test, or a switch. "tap:NAME" opens the Linux TAP device NAME (created if
    /// missing; needs CAP_NET_ADMIN), with checksum offload through the virtio-net header.
    #[arg(long, value_name = "stream:PATH|tap:NAME", value_parser = parse_net)]
    net: Option<NetBackend>,
    /// MAC address of the net device, six hex bytes separated by ':'.
    #[arg(long, value_name = "MAC", value_parser = parse_mac, requires = "net")]
    net_mac: Option<[u8; 6]>,
    /// Present legacy virtio-mmio windows (Version 1: GuestPageSize, QueueAlign, QueuePFN)
    /// instead of Version 2.
    #[arg(long)]
    legacy: bool,
    /// Offer packed virtqueues (VIRTIO_F_RING_PACKED, virtio v1.4 §2.8) on every Version 2
    /// window; Linux then drives every queue as a packed ring. The init also runs its
    /// `features` test (the negotiated bits of each device, bit 34 among them).
    #[arg(long, conflicts_with = "legacy")]
    packed: bool,
    /// Cap QueueSizeMax of every queue of every device at N descriptors (a power of two,
    /// 1..=32768). Default: each device's own (256).
    #[arg(long, value_name = "N", value_parser = parse_queue_size)]
    queue_size: Option<u16>,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 256)]
    mem: u64,
    /// Where the virtio devices run their queues: "worker" (one thread per device, woken by
    /// an eventfd at each QueueNotify; the hart keeps running guest code meanwhile) or
    /// "sync" (inside the guest's QueueNotify store, on the hart's thread).
    #[arg(long, value_name = "MODE", default_value = "worker")]
    exec: ExecMode,
    /// How the block devices do their I/O: "io-uring" (requests in flight in the kernel,
    /// completed out of order), "sync" (preadv/pwritev/fdatasync inside the notification), or
    /// "auto" (io_uring when the kernel offers it, else sync; the log and --stats say which).
    #[arg(long, value_name = "ENGINE", default_value = "auto")]
    blk_backend: IoEngine,
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
    /// Sample the guest pc and privilege every --profile-interval instructions and write
    /// the histogram ("count S|U 0x<pc>" lines, most first) to this file at exit; `vmmio
    /// profile` maps it to kernel functions.
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,
    /// Instructions between two profile samples.
    #[arg(long, value_name = "N", default_value_t = 10_007, requires = "profile")]
    profile_interval: u64,
    /// Do not connect host stdin to the guest console.
    #[arg(long)]
    no_stdin: bool,
    /// Serve a control socket at this path: one JSON request per line, e.g.
    /// {"resize_disk": {"index": 0}} after growing disk 0's image file (see the README).
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match cli.command {
        Cmd::Boot(args) => match boot(&args) {
            Ok((ExitReason::PowerOff, false)) => ExitCode::SUCCESS,
            Ok((ExitReason::PowerOff, true)) => {
                eprintln!("vmmio: the guest's init reported a FAIL line");
                ExitCode::from(EXIT_GUEST_FAIL)
            }
            Ok((ExitReason::Stopped, _)) => match terminal::stop_signal() {
                Some(sig) => {
                    eprintln!("vmmio: ended by signal {sig}");
                    ExitCode::from(128u8.saturating_add(u8::try_from(sig).unwrap_or(0)))
                }
                None => ExitCode::SUCCESS,
            },
            Ok((reason, _)) => {
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
        Cmd::Profile(args) => match profile_report(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vmmio: error: {e}");
                ExitCode::from(1)
            }
        },
        Cmd::Bench(args) => {
            let result = vmmio_bench::report::try_run(args.quick).and_then(|rows| {
                vmmio_bench::report::print_table(&rows);
                println!();
                let fio = vmmio_bench::fio::run(args.quick)?;
                print!("{}", vmmio_bench::fio::format_table(&fio));
                Ok(())
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("vmmio: bench failed: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs the script that makes `distro`'s guest and returns its directory.
fn guest_dir(distro: Distro) -> Result<PathBuf, BoxError> {
    match distro {
        Distro::Default => {
            eprintln!(
                "vmmio: no --kernel given, using the default guest ({})",
                vmmio_machine::guest::build_script().display()
            );
            Ok(vmmio_machine::guest::default_guest_dir()?)
        }
        Distro::Debian => {
            eprintln!(
                "vmmio: no --kernel given, using the Debian guest ({})",
                vmmio_machine::guest::debian_script().display()
            );
            let dir = vmmio_machine::guest::debian_guest_dir()?;
            let release = std::fs::read_to_string(dir.join("release")).unwrap_or_default();
            eprintln!(
                "vmmio: Debian kernel {} and busybox, cached in {}",
                release.trim(),
                dir.display()
            );
            Ok(dir)
        }
    }
}

/// `--queue-size`: a power of two in 1..=32768.
fn parse_queue_size(s: &str) -> Result<u16, String> {
    let n: u16 = s.parse().map_err(|e| format!("{e}"))?;
    if n == 0 || n > 32768 || !n.is_power_of_two() {
        return Err(format!("{n} is not a power of two in 1..=32768"));
    }
    Ok(n)
}

/// `--disk PATH[,ro]`.
fn parse_disk(spec: &str) -> (PathBuf, bool) {
    match spec.strip_suffix(",ro") {
        Some(path) => (PathBuf::from(path), true),
        None => (
            PathBuf::from(spec.strip_suffix(",rw").unwrap_or(spec)),
            false,
        ),
    }
}

/// Creates a sparse scratch image of `len` bytes in the temporary directory, opens it as a
/// block device and unlinks it at once: the open descriptor keeps it alive until exit.
fn scratch_disk(len: u64, options: BlockOptions) -> Result<Block<GuestMem>, BoxError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let path =
        std::env::temp_dir().join(format!("vmmio-scratch-{}-{nanos}.img", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let sized = file.set_len(len);
    let block = sized
        .map_err(|e| format!("cannot size {}: {e}", path.display()).into())
        .and_then(|()| {
            Block::from_path_with_options(
                &path,
                BlockOptions {
                    id: Some("vmmio-scratch".into()),
                    ..options
                },
            )
            .map_err(BoxError::from)
        });
    if let Err(e) = std::fs::remove_file(&path) {
        log::warn!("cannot remove the scratch disk {}: {e}", path.display());
    }
    block
}

type GuestMem = vm_memory::GuestMemoryMmap;

/// A disk's live-change handle and its image file, for the control socket.
fn disk_control(disk: &Block<GuestMem>) -> Result<DiskControl, BoxError> {
    Ok(DiskControl {
        handle: disk.config_handle(),
        file: disk.backend().file().try_clone()?,
    })
}

/// Where `--net` frames go.
#[derive(Clone, Debug)]
enum NetBackend {
    /// A Unix stream socket with QEMU's `-netdev stream` framing.
    Stream(PathBuf),
    /// A TAP device.
    Tap(String),
}

fn parse_net(s: &str) -> Result<NetBackend, String> {
    match s.split_once(':') {
        Some(("stream", path)) if !path.is_empty() => Ok(NetBackend::Stream(path.into())),
        Some(("tap", name)) if !name.is_empty() => Ok(NetBackend::Tap(name.into())),
        _ => Err(format!("expected stream:PATH or tap:NAME, got {s:?}")),
    }
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts
            .next()
            .ok_or_else(|| format!("{s:?}: six bytes expected"))?;
        *b = u8::from_str_radix(p, 16).map_err(|e| format!("{s:?}: {e}"))?;
    }
    if parts.next().is_some() {
        return Err(format!("{s:?}: six bytes expected"));
    }
    Ok(mac)
}

/// Attaches the virtio devices `args` asks for; returns their handles, the init tests
/// that fit them, and what live requests (control socket, SIGWINCH) can change.
fn attach_devices(
    machine: &mut Machine,
    args: &BootArgs,
) -> Result<(Vec<VirtioHandle>, Vec<&'static str>, Controls), BoxError> {
    let mut handles = Vec::new();
    let mut controls = Controls::default();
    let version = if args.legacy {
        TransportVersion::Legacy
    } else {
        TransportVersion::Modern
    };
    let mut tests = vec!["virtio"];
    let block_options = BlockOptions {
        queue_size: args
            .queue_size
            .unwrap_or(BlockOptions::default().queue_size),
        engine: args.blk_backend,
        ..BlockOptions::default()
    };
    if args.disk.is_empty() {
        if !args.no_disk {
            let disk = scratch_disk(SCRATCH_DISK_BYTES, block_options.clone())?;
            controls.disks.push(disk_control(&disk)?);
            controls.engines.push(disk.engine());
            handles.push(machine.add_virtio_device(version, Box::new(disk))?);
            tests.push("blk");
        }
    } else {
        for (i, spec) in args.disk.iter().enumerate() {
            let (path, read_only) = parse_disk(spec);
            let disk = Block::from_path_with_options(
                &path,
                BlockOptions {
                    read_only,
                    ..block_options.clone()
                },
            )?;
            controls.disks.push(disk_control(&disk)?);
            controls.engines.push(disk.engine());
            handles.push(machine.add_virtio_device(version, Box::new(disk))?);
            if i == 0 && !read_only {
                tests.push("blk");
            }
        }
    }
    if !args.no_rng {
        let mut rng = Rng::new();
        if let Some(n) = args.queue_size {
            rng = rng.with_queue_size(n);
        }
        handles.push(machine.add_virtio_device(version, Box::new(rng))?);
        tests.push("rng");
    }
    if !args.no_console {
        let output: Box<dyn Write + Send> = match &args.console_out {
            Some(path) => Box::new(
                File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?,
            ),
            None => Box::new(LinePrefixer::new(CONSOLE_PREFIX, std::io::stdout())),
        };
        let mut console = Console::new(output);
        if let Some(n) = args.queue_size {
            console = console.with_queue_size(n);
        }
        controls.console = Some(console.config_handle());
        handles.push(machine.add_virtio_device(version, Box::new(console))?);
        tests.push("hvc");
    }
    if let Some(path) = &args.vsock {
        let opts = VsockOptions {
            queue_size: args
                .queue_size
                .unwrap_or(VsockOptions::default().queue_size),
            ..VsockOptions::default()
        };
        let vsock = Vsock::with_options(args.vsock_cid, path, opts)?;
        handles.push(machine.add_virtio_device(version, Box::new(vsock))?);
        // The init's vsock test needs host programs on PATH_1234 and PATH: not a default.
    }
    if let Some(backend) = &args.net {
        let backend: Box<dyn vmmio_devices::net::Backend> = match backend {
            NetBackend::Stream(path) => Box::new(
                Stream::connect(path)
                    .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?,
            ),
            NetBackend::Tap(name) => {
                Box::new(Tap::open(name).map_err(|e| format!("cannot open TAP {name}: {e}"))?)
            }
        };
        let mut net = Net::new(backend);
        if let Some(mac) = args.net_mac {
            net = net.with_mac(mac);
        }
        if let Some(n) = args.queue_size {
            net = net.with_queue_size(n);
        }
        handles.push(machine.add_virtio_device(version, Box::new(net))?);
        // The init's net test needs a peer on the link: not a default.
    }
    if args.packed {
        for h in &handles {
            h.with_transport(|t| t.set_packed_ring(true));
        }
        tests.push("features");
    }
    Ok((handles, tests, controls))
}

/// `vmmio profile`: the top functions of a profile.
fn profile_report(args: &ProfileArgs) -> Result<(), BoxError> {
    let open = |p: &PathBuf| {
        File::open(p)
            .map(std::io::BufReader::new)
            .map_err(|e| format!("cannot open {}: {e}", p.display()))
    };
    let (profile, bad) = Profile::read(&mut open(&args.file)?)?;
    let map = SymbolMap::read(&mut open(&args.system_map)?)?;
    if bad > 0 {
        eprintln!(
            "vmmio: {bad} lines of {} did not parse",
            args.file.display()
        );
    }
    let total = profile.total().max(1);
    println!(
        "{} samples, one every {} instructions",
        profile.total(),
        profile.interval()
    );
    for f in map.report(&profile).iter().take(args.top) {
        println!(
            "{:6.2}% {:8} {}",
            f.samples as f64 * 100.0 / total as f64,
            f.samples,
            f.name
        );
    }
    Ok(())
}

fn boot(args: &BootArgs) -> Result<(ExitReason, bool), BoxError> {
    if args.shell && args.kernel.is_none() && args.distro == Distro::Default {
        return Err("the default guest's init has no shell: use --distro debian --shell".into());
    }
    let (kernel_path, initrd_path) = match &args.kernel {
        Some(k) => (k.clone(), args.initrd.clone()),
        None => {
            let dir = guest_dir(args.distro)?;
            let initrd = args
                .initrd
                .clone()
                .unwrap_or_else(|| dir.join("initramfs.cpio"));
            (dir.join("Image"), Some(initrd))
        }
    };

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
    let fail_seen = Arc::new(AtomicBool::new(false));
    let mut machine = Machine::new(MachineConfig {
        ram_size,
        console: Box::new(FailWatch::new(std::io::stdout(), fail_seen.clone())),
        // With --shell, the escape-key reader below feeds the console instead.
        stdin: !args.no_stdin && !args.shell,
        trace,
        instruction_limit: args.max_instructions,
        timeout,
        exec: args.exec,
    })?;
    let (handles, tests, controls) = attach_devices(&mut machine, args)?;
    let block_engines = controls.engines.clone();
    if let (Some(console), Some(fd)) = (&controls.console, control::host_terminal()) {
        control::follow_terminal_size(fd, console.clone())?;
    }
    let _api_socket = match &args.api_sock {
        Some(path) => Some(control::serve_api_socket(path, Arc::new(controls))?),
        None => None,
    };
    let mut cmdline = match &args.cmdline {
        Some(c) => c.clone(),
        None if args.kernel.is_none() && args.distro == Distro::Debian => format!(
            "{BASE_CMDLINE} {DEBIAN_CMDLINE} vmmio.tests={}",
            tests.join(",")
        ),
        None => format!("{BASE_CMDLINE} vmmio.tests={}", tests.join(",")),
    };
    if args.shell {
        cmdline.push(' ');
        cmdline.push_str(SHELL_CMDLINE);
    }
    if let Some(extra) = &args.append {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    log::info!("kernel command line: {cmdline}");
    // Read straight into guest RAM: a host copy would add the images to the peak RSS.
    machine.load_linux_files(&kernel_path, initrd_path.as_deref(), &cmdline)?;
    // Restores the terminal when dropped, after the run (and on the error paths).
    let _raw_mode = if args.shell {
        terminal::stop_on_signals(machine.stop_handle())?;
        terminal::spawn_console_reader(machine.console_input(), machine.stop_handle())?;
        let raw = terminal::RawMode::enable()?;
        if raw.is_some() {
            eprint!("vmmio: terminal in raw mode; Ctrl-A x ends the machine\r\n");
        }
        raw
    } else {
        None
    };
    if args.profile.is_some() {
        machine.enable_profile(args.profile_interval);
    }
    let reason = machine.run()?;
    if let (Some(path), Some(p)) = (&args.profile, machine.profile()) {
        let mut w = BufWriter::new(
            File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?,
        );
        p.write(&mut w)?;
        w.flush()?;
    }
    if args.stats {
        let n = machine.instructions_retired();
        let secs = machine.run_time().as_secs_f64();
        let idle = machine.idle_time().as_secs_f64();
        let busy = (secs - idle).max(1e-9);
        eprintln!(
            "vmmio: {n} instructions in {secs:.2} s ({idle:.2} s idle in WFI): {:.1} MIPS while busy",
            n as f64 / busy / 1e6
        );
        print_memory_stats(&machine);
        for (i, engine) in block_engines.iter().enumerate() {
            eprintln!("vmmio: block device {i}: {engine} engine");
        }
        for h in &handles {
            let st = h.stats();
            let at = h
                .slot()
                .map(|s| format!("slot {} at {:#x} irq {}", s.slot, s.base, s.irq))
                .unwrap_or_default();
            eprintln!(
                "vmmio: virtio {at}: device {} {:?}, status {:#x}, activated {}x with features {:#x}, {} notifies, {} interrupts",
                st.device_type,
                st.version,
                st.status,
                st.activations,
                st.activated_features,
                st.notifies,
                st.interrupts
            );
        }
    }
    // Drop the machine (and the devices' output sinks with it) before the caller prints.
    drop(machine);
    Ok((reason, fail_seen.load(Ordering::SeqCst)))
}

/// `--stats` memory line: the process's peak RSS, the guest RAM resident now (what the
/// guest touched), and their difference, the host-side cost of the machine and devices.
fn print_memory_stats(machine: &Machine) {
    // SAFETY: `usage` is a live, writable `rusage` for the duration of the call.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let guest = machine.ram_resident_bytes();
    match (rc, guest) {
        (0, Ok(guest)) => {
            // ru_maxrss is in KiB on Linux.
            let peak = u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024;
            let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
            eprintln!(
                "vmmio: peak RSS {:.1} MiB, guest RAM touched {:.1} MiB, host overhead {:.1} MiB",
                mib(peak),
                mib(guest),
                mib(peak.saturating_sub(guest))
            );
        }
        (_, Err(e)) => eprintln!("vmmio: guest RAM residency unknown: {e}"),
        _ => eprintln!(
            "vmmio: peak RSS unknown: {}",
            std::io::Error::last_os_error()
        ),
    }
}
