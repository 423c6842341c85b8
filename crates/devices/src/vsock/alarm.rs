//! The device's own clock: one `timerfd` armed for the earliest deadline
//! (a handshake's connect timeout, the end of an accept back-off), listed
//! in [`VirtioDevice::backend_fds`](vmmio_device::VirtioDevice::backend_fds)
//! while armed, so a deadline passes with no other event, in the worker's
//! epoll loop and in `MmioTransport::poll_backends` alike.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;
use vmmio_device::{ActivateError, BackendFd};

/// A one-shot timer for the earliest deadline.
#[derive(Debug, Default)]
pub(crate) struct Alarm {
    /// Opened at the first activate, kept across resets.
    fd: Option<TimerFd>,
    /// The deadline the timer is armed for.
    armed: Option<Instant>,
}

impl Alarm {
    /// The token of the timer fd; no other fd of the device uses it.
    pub(crate) const TOKEN: u64 = u64::MAX - 1;

    pub(crate) fn open(&mut self) -> Result<(), ActivateError> {
        if self.fd.is_none() {
            self.fd = Some(TimerFd::new().map_err(|e| ActivateError::Backend(e.into()))?);
        }
        Ok(())
    }

    /// Arms the timer for `at` (disarms it for `None`). Always sets the
    /// timer when it fired: setting it resets the expiration count, so the
    /// fd stops being readable without a (possibly blocking) read.
    pub(crate) fn set(&mut self, at: Option<Instant>, fired: bool) {
        if at == self.armed && !fired {
            return;
        }
        let Some(fd) = self.fd.as_mut() else {
            return;
        };
        let r = match at {
            // A zero duration would disarm: wait at least 1 ms.
            Some(t) => fd.reset(
                t.saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
                None,
            ),
            None => fd.clear(),
        };
        match r {
            Ok(()) => self.armed = at,
            Err(e) => {
                // Deadlines are then checked on the next device event.
                log::error!("virtio-vsock: timerfd failed: {e}");
                self.armed = None;
            }
        }
    }

    /// The timer fd, while armed.
    pub(crate) fn backend_fd(&self) -> Option<BackendFd> {
        let fd = self.fd.as_ref().filter(|_| self.armed.is_some())?;
        Some(BackendFd {
            fd: fd.as_raw_fd(),
            token: Self::TOKEN,
            readable: true,
            writable: false,
        })
    }
}
