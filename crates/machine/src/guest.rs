//! The default guest: a Linux `Image` and an `initramfs.cpio` built by the
//! repository's `guest/build.sh` (from Debian packages, cached under
//! `~/.cache/vmmio/guest/<hash of its inputs>/`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Environment variable naming a directory that already holds `Image` and
/// `initramfs.cpio`; when set, [`default_guest_dir`] returns it and builds
/// nothing.
pub const GUEST_DIR_ENV: &str = "VMMIO_GUEST_DIR";

/// Why the default guest could not be found or built.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// `guest/build.sh` could not be started (no bash, no script).
    #[error("cannot run {script}")]
    Spawn {
        /// The script's path.
        script: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `guest/build.sh` ran and failed (its log went to stderr).
    #[error("{script} failed: {status}")]
    Failed {
        /// The script's path.
        script: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
    },
    /// `guest/build.sh` succeeded but printed no output directory.
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
    let script = build_script();
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

/// Path of `guest/build.sh` in the source tree this crate was built from.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest/build.sh")
}
