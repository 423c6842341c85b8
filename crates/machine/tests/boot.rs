//! Boots the default guest (Linux 6.1 + the vmmio init, from `guest/build.sh`) on the
//! software machine and waits for its init to start and the machine to power off.
//!
//! `VMMIO_GUEST_DIR=DIR` uses `DIR/Image` and `DIR/initramfs.cpio` instead of running the
//! build script (which builds the kernel on first use: that takes many minutes, later runs
//! hit its cache).

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmmio_machine::{ExitReason, Machine, MachineConfig};

#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("console lock poisoned")
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn guest_dir() -> PathBuf {
    vmmio_machine::guest::default_guest_dir().expect("the default guest (guest/build.sh)")
}

#[test]
fn default_guest_boots_to_init_and_powers_off() {
    let dir = guest_dir();
    let kernel = std::fs::read(dir.join("Image")).expect("read Image");
    let initrd = std::fs::read(dir.join("initramfs.cpio")).expect("read initramfs.cpio");
    let console = Console::default();
    let mut m = Machine::new(MachineConfig {
        console: Box::new(console.clone()),
        timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    })
    .expect("create machine");
    m.load_linux(&kernel, Some(&initrd), "console=ttyS0 earlycon=sbi")
        .expect("load Linux");
    let reason = m.run().expect("run");
    let out = String::from_utf8_lossy(&console.0.lock().expect("console lock")).into_owned();
    let secs = m.run_time().as_secs_f64();
    eprintln!(
        "{} instructions in {secs:.2} s ({:.1} MIPS)",
        m.instructions_retired(),
        m.instructions_retired() as f64 / secs / 1e6
    );
    assert!(out.contains("Linux version 6."), "no Linux banner:\n{out}");
    assert!(
        out.contains("vmmio-init: started"),
        "init did not start:\n{out}"
    );
    assert!(!out.contains("Kernel panic"), "kernel panic:\n{out}");
    assert_eq!(reason, ExitReason::PowerOff, "console:\n{out}");
}
