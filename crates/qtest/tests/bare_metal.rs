//! The driver on bare metal: builds `examples/microvm-kernel` (a
//! freestanding x86_64 kernel), boots it on QEMU's `microvm` machine
//! through PVH with a block device (a file image), an entropy device, a
//! console and a network device (`-netdev stream` on a Unix socket this
//! test serves), in both register layouts, and checks what it did from
//! outside: its serial output, the image file, the console's chardev
//! file, the frame on the socket and QEMU's exit status
//! (`isa-debug-exit`).
//!
//! Cost: one release build of the kernel (about 35 s cold on 2 cores,
//! shared by both tests), then well under a second of TCG per boot.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use vmmio_qtest::qemu::QEMU_BINARY;
use vmmio_qtest::Mode;

/// QEMU's exit status when the kernel writes 0x2a to `isa-debug-exit`
/// (`(0x2a << 1) | 1`): every check inside the kernel held.
const EXIT_SUCCESS: i32 = 85;
/// Size of the disk image in bytes (128 sectors).
const IMAGE_BYTES: usize = 64 * 1024;
/// Sector the kernel overwrites, and what it writes there (mirrors
/// `write_pattern` in the kernel).
const WRITE_SECTOR: usize = 3;
fn write_pattern() -> Vec<u8> {
    (0..512usize)
        .map(|j| (j as u8).wrapping_mul(31) ^ 0x5a)
        .collect()
}
/// What the kernel writes to its virtio console.
const CONSOLE_MESSAGE: &[u8] = b"hello from the vmmio bare-metal kernel\n";
/// The serial number QEMU's block device reports to GET_ID.
const BLK_SERIAL: &str = "vmmio-bare";
/// The MAC QEMU's network device gets.
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// The frame the kernel sends (mirrors `exercise_net`): broadcast, from
/// [`MAC`], EtherType 0x88b5, a payload, zero-padded to 60 bytes.
fn kernel_frame() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(MAC);
    f.extend([0x88, 0xb5]);
    f.extend(b"vmmio bare-metal frame");
    f.resize(60, 0);
    f
}
/// The payload of the frame this test sends back.
const REPLY: &[u8] = b"reply from the test";

/// A boot that takes longer than this has hung (the kernel's own watchdog
/// ends a lost interrupt within about 30 s).
const BOOT_LIMIT: Duration = Duration::from_secs(180);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds the kernel once per test binary and returns its path.
fn kernel() -> &'static Path {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let root = workspace_root();
        let target_dir = root.join("target/microvm-kernel");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // The kernel is its own workspace but takes the host workspace's
        // pinned versions: cargo keeps the entries it needs from this copy
        // and resolves nothing new.
        fs::copy(
            root.join("Cargo.lock"),
            root.join("examples/microvm-kernel/Cargo.lock"),
        )
        .expect("copy Cargo.lock");
        let status = Command::new(cargo)
            // Flags meant for host code (coverage, sanitizers, target-cpu)
            // do not belong in a freestanding kernel.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS")
            .args(["build", "--release", "--manifest-path"])
            .arg(root.join("examples/microvm-kernel/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building examples/microvm-kernel failed");
        target_dir.join("release/vmmio-microvm-kernel")
    })
}

/// The image's bytes: a pattern with no repeats shorter than 251 bytes.
fn image() -> Vec<u8> {
    (0..IMAGE_BYTES)
        .map(|i| (i % 251) as u8 ^ (i >> 9) as u8)
        .collect()
}

fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

struct Run {
    status: i32,
    serial: String,
    image: Vec<u8>,
    console: Vec<u8>,
    /// Frames QEMU's network device sent to the socket.
    frames: Vec<Vec<u8>>,
}

/// The other end of QEMU's `-netdev stream` (frames with a 4-byte
/// big-endian length before each): accepts QEMU's connection, answers the
/// first frame with one addressed to its sender, and collects every frame
/// until QEMU closes the socket (or, never connected, `stop` is set).
fn net_peer(
    listener: UnixListener,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    std::thread::spawn(move || {
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let mut conn = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(_) if stop.load(Ordering::Relaxed) => return Vec::new(),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        conn.set_nonblocking(false).expect("blocking stream");
        conn.set_read_timeout(Some(BOOT_LIMIT))
            .expect("read timeout");
        let mut frames = Vec::new();
        loop {
            let mut len = [0u8; 4];
            if conn.read_exact(&mut len).is_err() {
                return frames;
            }
            let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
            if conn.read_exact(&mut frame).is_err() {
                return frames;
            }
            if frames.is_empty() && frame.len() >= 12 {
                let mut reply = frame[6..12].to_vec();
                reply.extend([0x02, 0, 0, 0, 0, 0x01, 0x88, 0xb5]);
                reply.extend(REPLY);
                reply.resize(60, 0);
                let mut msg = (reply.len() as u32).to_be_bytes().to_vec();
                msg.extend(reply);
                conn.write_all(&msg).expect("send the reply frame");
            }
            frames.push(frame);
        }
    })
}

/// Boots the kernel with blk, rng and console in `mode` and collects what
/// it left behind.
fn boot(mode: Mode) -> Run {
    let kernel = kernel();
    let dir = tempfile::tempdir().expect("temp dir");
    let (img, serial, console) = (
        dir.path().join("disk.img"),
        dir.path().join("serial.log"),
        dir.path().join("console.out"),
    );
    fs::write(&img, image()).expect("write image");
    let sock = dir.path().join("net.sock");
    let stop = Arc::new(AtomicBool::new(false));
    let peer = net_peer(
        UnixListener::bind(&sock).expect("bind the net socket"),
        stop.clone(),
    );
    let mut cmd = Command::new(QEMU_BINARY);
    // acpi=off: only then does microvm append `virtio_mmio.device=` entries
    // for its populated slots to the kernel command line.
    cmd.args(["-M", "microvm,acpi=off", "-m", "64M", "-nodefaults"])
        .args(["-no-user-config", "-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .arg("-drive")
        .arg(format!("id=d0,file={},format=raw,if=none", img.display()))
        .args([
            "-device",
            &format!("virtio-blk-device,drive=d0,serial={BLK_SERIAL}"),
        ])
        .args(["-device", "virtio-rng-device"])
        .arg("-chardev")
        .arg(format!("file,id=c0,path={}", console.display()))
        .args([
            "-device",
            "virtio-serial-device",
            "-device",
            "virtconsole,chardev=c0",
        ])
        .arg("-netdev")
        .arg(format!(
            "stream,id=n0,server=off,addr.type=unix,addr.path={}",
            sock.display()
        ))
        .args([
            "-device",
            "virtio-net-device,netdev=n0,mac=52:54:00:12:34:56",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.path().join("qemu.err")).expect("stderr file"));
    let layout = match mode {
        Mode::Legacy => "virtio-mmio.force-legacy=true",
        Mode::Modern => "virtio-mmio.force-legacy=false",
    };
    cmd.args(["-global", layout]);
    let mut child = cmd.spawn().expect("QEMU starts");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for QEMU") {
            break s;
        }
        if start.elapsed() > BOOT_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the kernel did not exit within {BOOT_LIMIT:?}; serial:\n{}",
                fs::read_to_string(&serial).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    stop.store(true, Ordering::Relaxed);
    let frames = peer.join().expect("net peer");
    let stderr = fs::read_to_string(dir.path().join("qemu.err")).unwrap_or_default();
    let serial = fs::read_to_string(&serial).unwrap_or_default();
    eprintln!("--- serial ({mode:?}) ---\n{serial}--- QEMU stderr ---\n{stderr}");
    Run {
        status: status.code().unwrap_or(-1),
        serial,
        image: fs::read(&img).expect("read image"),
        console: fs::read(&console).unwrap_or_default(),
        frames,
    }
}

/// The numbers of the kernel's `interrupts: handled N, requests M,
/// completed by interrupt K` line.
fn interrupt_counts(serial: &str) -> (u64, u64, u64) {
    let line = serial
        .lines()
        .find_map(|l| l.strip_prefix("interrupts: handled "))
        .expect("an interrupts line");
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("a number"))
        .collect();
    assert_eq!(nums.len(), 3, "interrupts line: {line}");
    (nums[0], nums[1], nums[2])
}

fn kernel_drives_blk_rng_console_with_interrupts(mode: Mode) {
    let run = boot(mode);
    let s = &run.serial;
    let version = match mode {
        Mode::Legacy => "Legacy",
        Mode::Modern => "Modern",
    };
    // The devices it found on the command line, with their register layout.
    for id in [2, 4, 3, 1] {
        assert!(
            s.lines()
                .any(|l| l.starts_with(&format!("found: device {id} at 0xfeb0"))
                    && l.contains(&format!("({version})"))),
            "device {id} not listed"
        );
    }
    assert!(s.contains(&format!("blk: id \"{BLK_SERIAL}\"")), "GET_ID");
    // What it read is the image file.
    let original = image();
    let want = format!(
        "blk: read {IMAGE_BYTES} bytes, fnv1a64 {:#018x}",
        fnv1a64(&original)
    );
    assert!(s.contains(&want), "expected {want:?}");
    // What it wrote is in the image file now, and nothing else changed.
    let mut expected = original;
    let at = WRITE_SECTOR * 512;
    expected[at..at + 512].copy_from_slice(&write_pattern());
    assert!(
        run.image == expected,
        "the image is not the original plus the written sector"
    );
    assert!(s.contains("blk: flushed"), "flush");
    let rng_bytes: usize = s
        .lines()
        .find_map(|l| l.strip_prefix("rng: ")?.split(' ').next()?.parse().ok())
        .expect("an rng line");
    assert!(rng_bytes > 0, "entropy: no bytes");
    assert_eq!(run.console, CONSOLE_MESSAGE, "console chardev file");
    // The frame it sent reached the socket intact, and the reply came back
    // to it (received in its interrupt handler).
    assert_eq!(
        run.frames.first(),
        Some(&kernel_frame()),
        "frame on the socket"
    );
    let want = format!(
        "net: reply {:?} received by interrupt",
        std::str::from_utf8(REPLY).unwrap()
    );
    assert!(s.contains(&want), "expected {want:?}");
    let (handled, requests, by_irq) = interrupt_counts(s);
    assert!(handled > 0, "no interrupt handled");
    assert_eq!(
        handled, by_irq,
        "interrupts handled vs requests completed by interrupt"
    );
    assert_eq!(requests, by_irq, "every request completed by an interrupt");
    assert_eq!(run.status, EXIT_SUCCESS, "QEMU exit status");
}

#[test]
fn microvm_kernel_legacy() {
    kernel_drives_blk_rng_console_with_interrupts(Mode::Legacy)
}

#[test]
fn microvm_kernel_modern() {
    kernel_drives_blk_rng_console_with_interrupts(Mode::Modern)
}
