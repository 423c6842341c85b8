//! The Linux-boot harness the `linux*` tests share: the default guest, `vmmio boot` on it,
//! and what a run left behind. Each test binary compiles its own copy, so helpers one
//! of them does not use are `#[allow(dead_code)]`.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

/// The default guest's directory (`Image`, `initramfs.cpio`), built by `guest/build.sh`
/// unless `VMMIO_GUEST_DIR` names one.
#[allow(dead_code)]
pub fn guest_dir() -> PathBuf {
    vmmio_machine::guest::default_guest_dir().expect("the default guest (guest/build.sh)")
}

/// What one `vmmio boot` (or other guest) run left behind.
#[allow(dead_code)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub secs: f64,
}

#[allow(dead_code)]
impl Run {
    /// The run of a finished process that took `secs`.
    pub fn new(out: &Output, secs: f64) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            secs,
        }
    }

    pub fn dump(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    pub fn assert_has(&self, needle: &str) {
        assert!(
            self.stdout.contains(needle),
            "no {needle:?}:\n{}",
            self.dump()
        );
    }

    /// The init's default device tests (blk, rng, hvc) passed, the console device's output
    /// reached the host, and no test failed nor the kernel warned.
    pub fn assert_device_tests_passed(&self) {
        for line in [
            "vmmio-init: blk OK bytes=1048576",
            "vmmio-init: rng OK bytes=4096",
            "vmmio-init: hvc OK",
            // What the guest wrote to its virtio console reached the host.
            "virtio-console| vmmio-hvc: hello from the guest",
            "vmmio-init: summary ok=4 fail=0",
            "vmmio-init: done",
        ] {
            self.assert_has(line);
        }
        assert!(!self.stdout.contains(" FAIL"), "{}", self.dump());
        assert!(
            !self.stdout.contains("WARNING:"),
            "kernel WARN:\n{}",
            self.dump()
        );
    }

    /// Each window was driven in the layout asked for, in this order of device types: a
    /// Version 2 ("Modern") driver must negotiate VIRTIO_F_VERSION_1, a legacy one cannot.
    pub fn assert_windows(&self, types: &[u32], version: &str) {
        const VERSION_1: u64 = 1 << 32;
        let windows = self.windows();
        let got: Vec<u32> = windows.iter().map(|w| w.0).collect();
        assert_eq!(got, types, "{}", self.dump());
        for (device, v, features) in windows {
            assert_eq!(v, version, "device {device}");
            assert_eq!(
                features & VERSION_1 != 0,
                version == "Modern",
                "device {device}: {features:#x}"
            );
        }
    }

    /// The `--stats` lines of the virtio windows: (device type, version, features).
    pub fn windows(&self) -> Vec<(u32, String, u64)> {
        self.stderr
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("vmmio: virtio slot ")?;
                let (_, rest) = rest.split_once(": device ")?;
                let mut words = rest.split([' ', ',']).filter(|w| !w.is_empty());
                let device = words.next()?.parse().ok()?;
                let version = words.next()?.to_owned();
                let (_, feat) = rest.split_once("with features 0x")?;
                let feat = feat.split(',').next()?;
                Some((device, version, u64::from_str_radix(feat, 16).ok()?))
            })
            .collect()
    }
}

/// `vmmio boot` on the default guest with the test file's `fixed` options, then `args`;
/// stdin is null.
#[allow(dead_code)]
pub fn boot_command(fixed: &[&str], args: &[&str]) -> Command {
    let dir = guest_dir();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmmio"));
    cmd.arg("boot")
        .arg("--kernel")
        .arg(dir.join("Image"))
        .arg("--initrd")
        .arg(dir.join("initramfs.cpio"))
        .args(fixed)
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// Runs [`boot_command`] to the end, timed; the time goes to stderr too.
#[allow(dead_code)]
pub fn boot(fixed: &[&str], args: &[&str]) -> Run {
    let start = Instant::now();
    let out = boot_command(fixed, args).output().expect("run vmmio");
    let run = Run::new(&out, start.elapsed().as_secs_f64());
    eprintln!("vmmio boot {args:?}: {:.2} s", run.secs);
    run
}
