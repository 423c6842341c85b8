//! The platform-level interrupt controller and the interrupt lines that feed it.
//!
//! Implements the SiFive PLIC register layout (`sifive,plic-1.0.0`, as in the RISC-V PLIC
//! Specification 1.0.0, "Memory Map") for one target: hart 0's S-mode context, which is
//! context 0 because the device tree's `interrupts-extended` names only that one. Sources are
//! level-triggered: a source is pending while its line is high and it is not claimed; claim
//! (read of the claim register) hands out the highest-priority pending enabled source and
//! holds it until complete (write of its number). The PLIC drives the hart's `sip.SEIP`
//! (Privileged spec §4.1.3 "Supervisor Interrupt Registers").

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::Thread;

use crate::layout::PLIC_NUM_SOURCES;

/// Register offsets inside the PLIC window (bytes).
mod reg {
    /// Source priorities, one 32-bit word per source (source 0 reserved).
    pub const PRIORITY: u64 = 0x0;
    /// Pending bits, one bit per source.
    pub const PENDING: u64 = 0x1000;
    /// Enable bits of context 0.
    pub const ENABLE: u64 = 0x2000;
    /// Priority threshold of context 0.
    pub const THRESHOLD: u64 = 0x20_0000;
    /// Claim (read) / complete (write) of context 0.
    pub const CLAIM: u64 = 0x20_0004;
}

/// Largest priority and threshold value (3 bits, as QEMU `virt`); wider writes are masked.
const PRIORITY_MASK: u32 = 7;

/// State shared between the hart thread and whoever drives interrupt lines.
#[derive(Debug, Default)]
pub(crate) struct IrqShared {
    /// Level of each source line, bit `n` = source `n` (bit 0 unused).
    levels: AtomicU64,
    /// Set whenever something the hart must look at changed (a line level); cleared by the hart.
    changed: AtomicBool,
    /// True while the hart sleeps in WFI.
    sleeping: AtomicBool,
    /// The thread running the hart, to wake it from WFI.
    waiter: Mutex<Option<Thread>>,
}

impl IrqShared {
    /// Marks "something changed" and wakes the hart if it sleeps.
    pub(crate) fn notify(&self) {
        self.changed.store(true, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            let waiter = self.waiter.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(thread) = waiter.as_ref() {
                thread.unpark();
            }
        }
    }

    /// Takes the "changed" flag.
    pub(crate) fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::AcqRel)
    }

    /// Registers the calling thread as the hart thread (to be woken from WFI).
    pub(crate) fn register_waiter(&self) {
        let mut waiter = self.waiter.lock().unwrap_or_else(PoisonError::into_inner);
        *waiter = Some(std::thread::current());
    }

    /// Parks the hart thread for at most `timeout` unless something changed; the
    /// sleeping/changed handshake makes a concurrent [`IrqShared::notify`] either visible
    /// before parking or an unpark that ends it.
    pub(crate) fn sleep(&self, timeout: std::time::Duration) {
        self.sleeping.store(true, Ordering::SeqCst);
        if !self.changed.load(Ordering::SeqCst) {
            std::thread::park_timeout(timeout);
        }
        self.sleeping.store(false, Ordering::SeqCst);
    }

    fn levels(&self) -> u64 {
        self.levels.load(Ordering::Acquire)
    }
}

/// One PLIC interrupt source line, as a device holds it.
///
/// Cheap to clone, `Send + Sync`: a device on any thread may call [`IrqLine::set_level`].
/// Lines are level-triggered: hold the level high while the device wants service (for a
/// virtio-mmio transport: while `InterruptStatus` is non-zero, virtio v1.4 §4.2.2) and drop it
/// when serviced.
#[derive(Clone, Debug)]
pub struct IrqLine {
    shared: Arc<IrqShared>,
    source: u32,
}

impl IrqLine {
    /// A handle for PLIC source `source` (1..=63, checked by the caller).
    pub(crate) fn new(shared: Arc<IrqShared>, source: u32) -> Self {
        Self { shared, source }
    }

    /// Drives the line high (`true`) or low (`false`). Changing the level wakes the hart if it
    /// waits in WFI; setting the level it already has does nothing.
    pub fn set_level(&self, high: bool) {
        let bit = 1u64 << (self.source & 63);
        let old = if high {
            self.shared.levels.fetch_or(bit, Ordering::AcqRel)
        } else {
            self.shared.levels.fetch_and(!bit, Ordering::AcqRel)
        };
        if (old & bit != 0) != high {
            self.shared.notify();
        }
    }

    /// The current level of the line.
    pub fn level(&self) -> bool {
        self.shared.levels() & (1u64 << (self.source & 63)) != 0
    }

    /// The PLIC source number (1..=63) this line drives.
    pub fn source(&self) -> u32 {
        self.source
    }
}

/// The PLIC register file for the single S-mode context.
#[derive(Debug)]
pub(crate) struct Plic {
    shared: Arc<IrqShared>,
    /// Priority of each source, 0 (never interrupts) ..= [`PRIORITY_MASK`].
    priority: [u32; 64],
    /// Enable bits of context 0.
    enable: u64,
    /// Priority threshold of context 0.
    threshold: u32,
    /// Sources claimed and not yet completed.
    claimed: u64,
}

/// Bits of the valid sources 1..=PLIC_NUM_SOURCES.
const SOURCE_MASK: u64 = (u64::MAX >> (64 - PLIC_NUM_SOURCES - 1)) & !1;

impl Plic {
    pub(crate) fn new(shared: Arc<IrqShared>) -> Self {
        Self {
            shared,
            priority: [0; 64],
            enable: 0,
            threshold: 0,
            claimed: 0,
        }
    }

    /// Sources whose gateway forwards a request: line high and not claimed.
    fn pending(&self) -> u64 {
        self.shared.levels() & !self.claimed & SOURCE_MASK
    }

    /// True when context 0 has a pending, enabled source above its threshold (drives SEIP).
    pub(crate) fn seip(&self) -> bool {
        let mut candidates = self.pending() & self.enable;
        while candidates != 0 {
            let src = candidates.trailing_zeros();
            candidates &= candidates - 1;
            if self.priority.get(src as usize).copied().unwrap_or(0) > self.threshold {
                return true;
            }
        }
        false
    }

    /// Claim: the highest-priority pending enabled source (lowest number on ties), or 0.
    fn claim(&mut self) -> u32 {
        let mut best = 0u32;
        let mut best_prio = 0u32;
        let mut candidates = self.pending() & self.enable;
        while candidates != 0 {
            let src = candidates.trailing_zeros();
            candidates &= candidates - 1;
            let prio = self.priority.get(src as usize).copied().unwrap_or(0);
            if prio > best_prio {
                best = src;
                best_prio = prio;
            }
        }
        if best != 0 {
            self.claimed |= 1u64 << best;
        }
        best
    }

    fn complete(&mut self, source: u32) {
        if source == 0 || source > PLIC_NUM_SOURCES {
            log::debug!("plic: complete of invalid source {source} ignored");
            return;
        }
        let bit = 1u64 << source;
        // PLIC spec: a completion for a source not enabled for the target is ignored.
        if self.enable & bit == 0 {
            log::debug!("plic: complete of disabled source {source} ignored");
            return;
        }
        self.claimed &= !bit;
    }

    fn read_word(&mut self, offset: u64) -> u32 {
        match offset {
            o if o < reg::PENDING => self
                .priority
                .get(((o - reg::PRIORITY) / 4) as usize)
                .copied()
                .unwrap_or(0),
            o if o == reg::PENDING => self.pending() as u32,
            o if o == reg::PENDING + 4 => (self.pending() >> 32) as u32,
            o if o == reg::ENABLE => self.enable as u32,
            o if o == reg::ENABLE + 4 => (self.enable >> 32) as u32,
            reg::THRESHOLD => self.threshold,
            reg::CLAIM => self.claim(),
            _ => 0,
        }
    }

    fn write_word(&mut self, offset: u64, value: u32) {
        match offset {
            o if o < reg::PENDING => {
                let src = ((o - reg::PRIORITY) / 4) as usize;
                if src != 0 {
                    if let Some(p) = self.priority.get_mut(src) {
                        *p = value & PRIORITY_MASK;
                    }
                }
            }
            o if o == reg::ENABLE => {
                self.enable = (self.enable & !0xffff_ffff) | u64::from(value) & SOURCE_MASK
            }
            o if o == reg::ENABLE + 4 => {
                self.enable = (self.enable & 0xffff_ffff) | (u64::from(value) << 32) & SOURCE_MASK
            }
            reg::THRESHOLD => self.threshold = value & PRIORITY_MASK,
            reg::CLAIM => self.complete(value),
            _ => log::debug!("plic: write to read-only or unmapped offset {offset:#x} ignored"),
        }
    }

    /// A guest load of `data.len()` bytes at `offset` into the PLIC window. The registers are
    /// 32 bits wide; 64-bit loads read two words, narrower ones a part of one.
    pub(crate) fn read(&mut self, offset: u64, data: &mut [u8]) {
        let word_off = offset & !3;
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&self.read_word(word_off).to_le_bytes());
        if data.len() == 8 && offset & 7 == 0 {
            bytes[4..].copy_from_slice(&self.read_word(word_off + 4).to_le_bytes());
        }
        let start = (offset & 3) as usize;
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(start + i).copied().unwrap_or(0);
        }
        self.shared.notify();
    }

    /// A guest store to the PLIC window; only naturally aligned 32- and 64-bit stores have an
    /// effect (the PLIC spec defines 32-bit registers).
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) {
        match (data.len(), offset & 7) {
            (4, 0) | (4, 4) => {
                let mut w = [0u8; 4];
                w.copy_from_slice(data);
                self.write_word(offset, u32::from_le_bytes(w));
            }
            (8, 0) => {
                let mut w = [0u8; 8];
                w.copy_from_slice(data);
                let v = u64::from_le_bytes(w);
                self.write_word(offset, v as u32);
                self.write_word(offset + 4, (v >> 32) as u32);
            }
            _ => log::debug!(
                "plic: {}-byte store at {offset:#x} ignored (registers are 32-bit)",
                data.len()
            ),
        }
        self.shared.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plic() -> (Plic, Arc<IrqShared>) {
        let shared = Arc::new(IrqShared::default());
        (Plic::new(shared.clone()), shared)
    }

    fn w(p: &mut Plic, off: u64, v: u32) {
        p.write(off, &v.to_le_bytes());
    }

    fn r(p: &mut Plic, off: u64) -> u32 {
        let mut b = [0u8; 4];
        p.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn claim_complete_level_triggered() {
        let (mut p, shared) = plic();
        let line5 = IrqLine::new(shared.clone(), 5);
        let line7 = IrqLine::new(shared.clone(), 7);
        w(&mut p, 5 * 4, 1);
        w(&mut p, 7 * 4, 3);
        w(&mut p, reg::ENABLE, (1 << 5) | (1 << 7));
        assert!(!p.seip());
        line5.set_level(true);
        assert!(shared.take_changed());
        line7.set_level(true);
        assert!(p.seip());
        assert_eq!(r(&mut p, reg::PENDING), (1 << 5) | (1 << 7));
        // Highest priority first.
        assert_eq!(r(&mut p, reg::CLAIM), 7);
        assert_eq!(r(&mut p, reg::CLAIM), 5);
        assert_eq!(r(&mut p, reg::CLAIM), 0);
        assert!(!p.seip());
        // Complete while still high: pending again.
        w(&mut p, reg::CLAIM, 7);
        assert!(p.seip());
        line7.set_level(false);
        assert!(!p.seip());
        w(&mut p, reg::CLAIM, 5);
        line5.set_level(false);
        assert_eq!(r(&mut p, reg::PENDING), 0);
    }

    #[test]
    fn threshold_and_priority_zero_mask() {
        let (mut p, shared) = plic();
        let line = IrqLine::new(shared, 3);
        line.set_level(true);
        w(&mut p, reg::ENABLE, 1 << 3);
        // Priority 0 never interrupts.
        assert!(!p.seip());
        w(&mut p, 3 * 4, 2);
        assert!(p.seip());
        w(&mut p, reg::THRESHOLD, 2);
        assert!(!p.seip());
        assert_eq!(r(&mut p, reg::THRESHOLD), 2);
        // Claim ignores the threshold.
        assert_eq!(r(&mut p, reg::CLAIM), 3);
        // Priority is 3 bits wide, source 0 has none.
        w(&mut p, 3 * 4, 0xffff);
        assert_eq!(r(&mut p, 3 * 4), 7);
        w(&mut p, 0, 5);
        assert_eq!(r(&mut p, 0), 0);
    }

    #[test]
    fn disabled_completion_is_ignored_and_bad_ids_do_not_panic() {
        let (mut p, shared) = plic();
        let line = IrqLine::new(shared, 63);
        line.set_level(true);
        w(&mut p, 63 * 4, 1);
        w(&mut p, reg::ENABLE + 4, 1 << 31);
        assert_eq!(r(&mut p, reg::ENABLE + 4), 1 << 31);
        assert_eq!(r(&mut p, reg::CLAIM), 63);
        w(&mut p, reg::ENABLE + 4, 0);
        w(&mut p, reg::CLAIM, 63);
        w(&mut p, reg::ENABLE + 4, 1 << 31);
        assert_eq!(r(&mut p, reg::CLAIM), 0, "still claimed");
        w(&mut p, reg::CLAIM, 63);
        assert_eq!(r(&mut p, reg::CLAIM), 63);
        for id in [0, 64, u32::MAX] {
            w(&mut p, reg::CLAIM, id);
        }
        let mut b = [0u8; 1];
        p.read(0x5f_fffc, &mut b);
        p.write(0x5f_fffd, &[1]);
    }
}
