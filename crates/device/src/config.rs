//! Configuration changes the host makes while a driver runs (virtio v1.4
//! §2.5 "Device Configuration Space", §4.2.2 `ConfigGeneration`, §4.2.3.4
//! configuration change notification).
//!
//! A VMM resizes a disk, a terminal or takes a link down while the guest
//! runs. The driver reads a field wider than 32 bits (a block `capacity`)
//! or several fields (console `cols` and `rows`) with several accesses and
//! uses `ConfigGeneration` to detect a change in between (§2.5.1: it reads
//! the generation, the fields, the generation again, and retries on a
//! difference). [`LiveConfig`] makes that protocol hold for host changes
//! made from any thread:
//!
//! - the bytes sit behind one mutex; a driver read ([`LiveConfig::read`])
//!   and a host change ([`LiveConfig::change`]) each hold it for their whole
//!   length, so a single access never sees half a change;
//! - a change that alters the bytes increments the device's generation
//!   counter *inside* the same critical section, so a driver that read one
//!   part before the change and another part after it reads a different
//!   `ConfigGeneration` afterwards (the transport adds
//!   [`VirtioDevice::config_generation`] into the register);
//! - then, if the device runs (between `activate` and `reset`), it raises
//!   the configuration change interrupt, still under the lock, so a reset
//!   that races with the change is ordered after it (and clears it).
//!
//! The generation is an atomic: the transport reads it without the lock.
//! A device keeps one [`LiveConfig`], hands clones of it to its host-side
//! handles (`Block::config_handle`, `Console::config_handle`, ...), reads
//! it in `read_config`, reports [`LiveConfig::generation`] from
//! `config_generation`, and calls [`LiveConfig::activate`] /
//! [`LiveConfig::deactivate`] from `activate` / `reset`.
//!
//! [`VirtioDevice::config_generation`]: crate::VirtioDevice::config_generation

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::interrupt::{InterruptCause, InterruptStatus};

/// A device configuration space the host may change from any thread while
/// the driver reads it. Cheap to clone (clones share the bytes); `Send` and
/// `Sync`.
///
/// # Example
///
/// ```
/// use vmmio_device::LiveConfig;
///
/// let config = LiveConfig::new(vec![0; 8]);
/// let host_side = config.clone(); // e.g. moved into a control thread
/// host_side.change(|bytes| bytes[..8].copy_from_slice(&4096u64.to_le_bytes()));
/// let mut capacity = [0u8; 8];
/// config.read(0, &mut capacity);
/// assert_eq!(u64::from_le_bytes(capacity), 4096);
/// assert_eq!(config.generation(), 1);
/// ```
#[derive(Clone)]
pub struct LiveConfig {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Host changes so far; incremented only while `state` is locked.
    generation: AtomicU32,
}

struct State {
    bytes: Vec<u8>,
    /// The running device's interrupt status; `None` outside
    /// `activate`..`reset`.
    interrupt: Option<InterruptStatus>,
}

impl LiveConfig {
    /// A configuration space holding `bytes` (its whole length, in bytes,
    /// fixed from now on), generation 0, device not running.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    bytes,
                    interrupt: None,
                }),
                generation: AtomicU32::new(0),
            }),
        }
    }

    /// Holds the lock; a panic in another holder leaves the bytes as they
    /// were between two statements (never half-copied), so go on.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Copies `data.len()` bytes from byte `offset` into `data`, as one
    /// atomic snapshot; bytes past the end read as 0 (any offset, any
    /// length, never panics).
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let state = self.lock();
        copy_out(&state.bytes, offset, data);
    }

    /// A copy of the whole configuration space.
    pub fn snapshot(&self) -> Vec<u8> {
        self.lock().bytes.clone()
    }

    /// The number of host changes made so far (wrapping), for
    /// [`crate::VirtioDevice::config_generation`].
    pub fn generation(&self) -> u32 {
        self.shared.generation.load(Ordering::SeqCst)
    }

    /// A host-side change: runs `edit` on the bytes under the lock. If the
    /// bytes differ afterwards, the generation is incremented and, while
    /// the device runs, a configuration change notification is raised
    /// (`InterruptStatus` bit 1), all before the lock is released. Returns
    /// what `edit` returned.
    ///
    /// `edit` must not call back into this `LiveConfig` (it would
    /// deadlock), and should be short: driver config reads wait for it.
    pub fn change<R>(&self, edit: impl FnOnce(&mut [u8]) -> R) -> R {
        let mut state = self.lock();
        let before = state.bytes.clone();
        let result = edit(&mut state.bytes);
        if state.bytes != before {
            self.shared.generation.fetch_add(1, Ordering::SeqCst);
            if let Some(interrupt) = &state.interrupt {
                interrupt.raise(InterruptCause::ConfigChange);
            }
        }
        result
    }

    /// A driver store: runs `edit` on the bytes under the lock, without a
    /// generation change or a notification (the transport counts driver
    /// stores that change what reads return itself).
    pub fn driver_write<R>(&self, edit: impl FnOnce(&mut [u8]) -> R) -> R {
        edit(&mut self.lock().bytes)
    }

    /// The device started (`VirtioDevice::activate`): later host changes
    /// raise configuration change notifications through `interrupt`.
    pub fn activate(&self, interrupt: InterruptStatus) {
        self.lock().interrupt = Some(interrupt);
    }

    /// The device was reset: later host changes only change the bytes and
    /// the generation. When this returns no change raises an interrupt any
    /// more.
    pub fn deactivate(&self) {
        self.lock().interrupt = None;
    }
}

impl fmt::Debug for LiveConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("LiveConfig")
            .field("bytes", &state.bytes)
            .field("generation", &self.generation())
            .field("running", &state.interrupt.is_some())
            .finish()
    }
}

/// Copies `data.len()` bytes of `bytes` from byte `offset`; bytes past the
/// end read as 0.
fn copy_out(bytes: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Some(src) = usize::try_from(offset)
        .ok()
        .and_then(|start| bytes.get(start..))
    else {
        return;
    };
    let n = src.len().min(data.len());
    if let (Some(dst), Some(src)) = (data.get_mut(..n), src.get(..n)) {
        dst.copy_from_slice(src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::Interrupt;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Count(AtomicUsize);
    impl Interrupt for Count {
        fn trigger(&self, cause: InterruptCause) {
            assert_eq!(cause, InterruptCause::ConfigChange);
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn reads_past_the_end_are_zero_and_never_panic() {
        let c = LiveConfig::new(vec![1, 2, 3]);
        let mut d = [9u8; 4];
        c.read(1, &mut d);
        assert_eq!(d, [2, 3, 0, 0]);
        c.read(u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn a_change_bumps_the_generation_and_notifies_only_while_running() {
        let line = Arc::new(Count::default());
        let status = InterruptStatus::new(line.clone());
        let c = LiveConfig::new(vec![0; 4]);
        c.change(|b| b[0] = 1);
        assert_eq!((c.generation(), line.0.load(Ordering::SeqCst)), (1, 0));
        c.activate(status.clone());
        c.change(|b| b[0] = 2);
        assert_eq!((c.generation(), line.0.load(Ordering::SeqCst)), (2, 1));
        assert_eq!(status.get(), vmmio_spec::mmio::INT_CONFIG);
        // A change that changes nothing is no change.
        c.change(|b| b[0] = 2);
        assert_eq!((c.generation(), line.0.load(Ordering::SeqCst)), (2, 1));
        c.deactivate();
        c.change(|b| b[0] = 3);
        assert_eq!((c.generation(), line.0.load(Ordering::SeqCst)), (3, 1));
        // Driver stores are the transport's to count.
        c.driver_write(|b| b[1] = 7);
        assert_eq!(c.generation(), 3);
        assert_eq!(c.snapshot(), vec![3, 7, 0, 0]);
    }
}
