//! The guests the repository's scripts make, each a directory with a Linux `Image` and an
//! `initramfs.cpio`:
//! - the default guest, built by `guest/build.sh` (a small kernel built from Debian's
//!   linux-source package and a test program as init; cached under
//!   `~/.cache/vmmio/guest/<hash of its inputs>/`);
//! - the Debian guest, made by `scripts/debian-guest.sh` (Debian's own riscv64 kernel
//!   package and busybox-static, fetched through apt; cached under
//!   `~/.cache/vmmio/debian/<hash of the package versions and inputs>/`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Environment variable naming a directory that already holds `Image` and
/// `initramfs.cpio`; when set, [`default_guest_dir`] returns it and builds
/// nothing.
pub const GUEST_DIR_ENV: &str = "VMMIO_GUEST_DIR";

/// Environment variable naming a directory that already holds the Debian guest's `Image`
/// and `initramfs.cpio`; when set, [`debian_guest_dir`] returns it and fetches nothing.
pub const DEBIAN_DIR_ENV: &str = "VMMIO_DEBIAN_DIR";

/// Why a guest could not be found or built.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The script could not be started (no bash, no script).
    #[error("cannot run {script}")]
    Spawn {
        /// The script's path.
        script: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The script ran and failed (its log went to stderr).
    #[error("{script} failed: {status}")]
    Failed {
        /// The script's path.
        script: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
    },
    /// The script succeeded but printed no output directory.
    #[error("{script} printed no output directory")]
    NoOutput {
        /// The script's path.
        script: PathBuf,
    },
}

/// The directory holding the default guest's `Image` and `initramfs.cpio`:
/// `$VMMIO_GUEST_DIR` if set, else the last stdout line of
/// `guest/build.sh`, which builds the guest on first use (minutes; its
/// progress goes to stderr) and answers from its cache afterwards.
///
/// # Errors
/// A [`GuestError`] when the script cannot run, fails, or prints nothing.
pub fn default_guest_dir() -> Result<PathBuf, GuestError> {
    if let Some(dir) = std::env::var_os(GUEST_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    run_script(build_script())
}

/// The directory holding the Debian guest's `Image` and `initramfs.cpio`:
/// `$VMMIO_DEBIAN_DIR` if set, else the last stdout line of `scripts/debian-guest.sh`,
/// which downloads Debian's riscv64 kernel package and busybox-static through apt on first
/// use (about 115 MB; its progress goes to stderr) and answers from its cache afterwards.
///
/// # Errors
/// A [`GuestError`] when the script cannot run, fails, or prints nothing.
pub fn debian_guest_dir() -> Result<PathBuf, GuestError> {
    if let Some(dir) = std::env::var_os(DEBIAN_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    run_script(debian_script())
}

/// Runs `script` with bash, its stderr passed through; returns its last non-empty stdout
/// line as a path.
fn run_script(script: PathBuf) -> Result<PathBuf, GuestError> {
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| GuestError::Spawn {
            script: script.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(GuestError::Failed {
            script,
            status: out.status,
        });
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or_else(|| GuestError::NoOutput {
            script: script.clone(),
        })?;
    Ok(PathBuf::from(dir))
}

/// Path of `scripts/debian-guest.sh` in the source tree this crate was built from.
pub fn debian_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/debian-guest.sh")
}

/// Path of `guest/build.sh` in the source tree this crate was built from.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest/build.sh")
}
