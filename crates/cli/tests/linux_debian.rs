//! Debian's own riscv64 kernel (linux-image-6.12.*-riscv64, RV64GC, SBI v2, RISCV_SBI_V01
//! off) and busybox-static on the software machine with vmmio's devices, through
//! `vmmio boot --distro debian`: the guest that `scripts/debian-guest.sh` fetches through
//! apt and caches (run by `scripts/test.sh` before the tests, so the download happens
//! there; `VMMIO_DEBIAN_DIR=DIR` names a ready directory instead).
//!
//! - the init (guest/debian/init) loads virtio_mmio and the class modules, the devices
//!   bind, and the default guest's test program passes, in both register layouts;
//! - `--shell` on a pseudo-terminal: a busybox shell that runs commands, reads
//!   /proc/cpuinfo, writes the disk with dd, takes Ctrl-C, and ends at Ctrl-A x with the
//!   terminal restored.
//!
//! Cost: each boot interprets about 2.3 billion guest instructions (see --stats).

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Run;

/// Upper bound of one boot (a loaded CI machine: 2 cores shared with other tests).
const TIMEOUT_SECS: &str = "600";

/// `vmmio boot --distro debian --stats --timeout …` with `args`.
fn debian_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmmio"));
    cmd.args([
        "boot",
        "--distro",
        "debian",
        "--stats",
        "--timeout",
        TIMEOUT_SECS,
    ])
    .args(args);
    cmd
}

fn boot(args: &[&str]) -> Run {
    let start = Instant::now();
    let out = debian_command(&["--no-stdin"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run vmmio");
    let run = Run::new(&out, start.elapsed().as_secs_f64());
    eprintln!("vmmio boot --distro debian {args:?}: {:.2} s", run.secs);
    run
}

fn assert_debian_devices_work(run: &Run, version: &str, types: &[u32]) {
    assert_eq!(run.code, Some(0), "{}", run.dump());
    for line in [
        // Debian's kernel, through SBI v2.0 with the debug console.
        "SBI specification v2.0 detected",
        "SBI DBCN extension detected",
        "vmmio-debian: started: Linux 6.12.",
        // The modules, decompressed on the host, all loaded.
        "vmmio-debian: modules loaded=9 failed=0: virtio_mmio virtio_blk virtio_rng",
        "vmmio-debian: block vda bytes=67108864",
        // The entropy device is the kernel's hwrng.
        "vmmio-debian: hwrng virtio_rng.0",
        "vmmio-debian: console /dev/hvc0",
        // The default guest's test program, exec'd by the init.
        "vmmio-init: started",
    ] {
        run.assert_has(line);
    }
    run.assert_device_tests_passed();
    run.assert_windows(types, version);
}

#[test]
fn debian_kernel_drives_version2_devices() {
    let run = boot(&[]);
    assert_debian_devices_work(&run, "Modern", &[2, 4, 3]);
    run.assert_has("vmmio-debian: block vda bytes=67108864 (no filesystem the kernel knows");
    // No ext4 disk, no ext4 module.
    assert!(!run.stdout.contains("modules.ext4"), "{}", run.dump());
}

/// Legacy windows, and a second disk holding an ext4 filesystem (made on the host with
/// mkfs.ext4 -d) that the init mounts read-only and lists.
#[test]
fn debian_kernel_drives_legacy_devices_and_mounts_an_ext4_disk() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().join("scratch.img");
    std::fs::File::create(&scratch)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let content = dir.path().join("content");
    std::fs::create_dir(&content).unwrap();
    std::fs::write(content.join("hello-from-the-host.txt"), "hi\n").unwrap();
    let ext4 = dir.path().join("ext4.img");
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&ext4)
        .arg("8M")
        .output()
        .expect("mkfs.ext4 (package e2fsprogs)");
    assert!(mkfs.status.success(), "{mkfs:?}");
    let scratch_arg = scratch.to_str().unwrap().to_owned();
    let ext4_arg = format!("{},ro", ext4.to_str().unwrap());
    let run = boot(&["--legacy", "--disk", &scratch_arg, "--disk", &ext4_arg]);
    assert_debian_devices_work(&run, "Legacy", &[2, 2, 4, 3]);
    run.assert_has(
        "vmmio-debian: modules.ext4 loaded=5 failed=0: jbd2 mbcache crc16 ext4 crc32c_generic",
    );
    run.assert_has("vmmio-debian: block vdb bytes=8388608 mounted read-only on /mnt/vdb: ");
    run.assert_has("hello-from-the-host.txt");
}

/// A pseudo-terminal: (master, slave).
fn openpty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: the out-pointers are valid; name, termios and winsize may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty returned two fresh descriptors that nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

fn termios(fd: &OwnedFd) -> libc::termios {
    // SAFETY: zeroed termios is a valid out-parameter; fd is open.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) }, 0);
    t
}

/// What the terminal showed, collected by a reader thread.
struct Screen {
    text: Arc<Mutex<Vec<u8>>>,
    child: Child,
}

impl Screen {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.text.lock().unwrap()).into_owned()
    }

    /// Waits until the screen, from byte `from` on, contains `needle`; returns the offset
    /// just after it. Panics with the screen after `secs` (a hung guest fails, not hangs).
    fn wait_for(&mut self, from: usize, needle: &str, secs: u64) -> usize {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let text = self.text();
            if let Some(i) = text.get(from..).and_then(|t| t.find(needle)) {
                return from + i + needle.len();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("vmmio exited ({status}) before {needle:?}:\n{text}");
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("no {needle:?} within {secs} s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn debian_shell_on_a_pseudo_terminal() {
    let disk = tempfile::NamedTempFile::new().unwrap();
    disk.as_file().set_len(16 << 20).unwrap();
    let disk_arg = disk.path().to_str().unwrap().to_owned();
    let (master, slave) = openpty();
    let before = termios(&slave);
    assert!(before.c_lflag & libc::ICANON != 0 && before.c_lflag & libc::ECHO != 0);

    let child = debian_command(&["--shell", "--disk", &disk_arg, "--no-rng"])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()))
        .spawn()
        .expect("run vmmio");
    let text = Arc::new(Mutex::new(Vec::new()));
    let mut reader = std::fs::File::from(master.try_clone().unwrap());
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // Ends with EIO once no process holds the slave.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let mut keys = std::fs::File::from(master);
    let mut screen = Screen { text, child };
    let mut type_keys = |s: &[u8]| keys.write_all(s).unwrap();

    let mut at = screen.wait_for(0, "terminal in raw mode; Ctrl-A x ends the machine", 120);
    at = screen.wait_for(at, "vmmio-debian: shell on the console", 600);
    at = screen.wait_for(at, "# ", 120);

    type_keys(b"echo hello-$((6 * 7))\r");
    at = screen.wait_for(at, "hello-42", 120);

    type_keys(b"cat /proc/cpuinfo\r");
    at = screen.wait_for(at, "isa\t\t: rv64imafdc", 120);

    // dd to the disk (/dev/vda is the file above), flushed.
    type_keys(
        b"echo vmmio-pty-dd | dd of=/dev/vda bs=512 conv=sync,fsync && echo dd-$((1 + 1))-ok\r",
    );
    at = screen.wait_for(at, "dd-2-ok", 120);

    // Ctrl-C reaches the guest's foreground job (the host takes no signal in raw mode).
    type_keys(b"sleep 1000\r");
    std::thread::sleep(Duration::from_secs(2));
    type_keys(b"\x03");
    type_keys(b"echo after-ctrl-c-$?\r");
    // 130 = killed by SIGINT.
    at = screen.wait_for(at, "after-ctrl-c-130", 120);

    // Ctrl-A x ends the machine: exit 0, terminal restored.
    type_keys(b"\x01x");
    screen.wait_for(at, "Ctrl-A x: ending the machine", 60);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = screen.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "vmmio did not exit:\n{}",
            screen.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}:\n{}", screen.text());
    let after = termios(&slave);
    assert_eq!(
        (after.c_lflag, after.c_iflag, after.c_oflag),
        (before.c_lflag, before.c_iflag, before.c_oflag),
        "terminal not restored"
    );

    let mut head = vec![0u8; 512];
    std::fs::File::open(disk.path())
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert!(head.starts_with(b"vmmio-pty-dd\n"), "{:?}", &head[..32]);
    assert!(head[13..].iter().all(|&b| b == 0));
}
