//! The Supervisor Binary Interface, implemented by the machine itself (there is no M-mode
//! firmware): an `ecall` from S-mode lands here, as under KVM RISC-V.
//!
//! Follows the RISC-V SBI specification v1.0.0: chapter 3 "Binary Encoding" (EID in a7, FID
//! in a6, arguments in a0..a5, error in a0 and value in a1), chapter 4 "Base Extension",
//! chapter 5 "Legacy Extensions" (set_timer, console putchar/getchar, clear/send IPI, remote
//! fences, shutdown; result in a0 only), chapter 6 "Timer", chapter 7 "IPI", chapter 8
//! "RFENCE", chapter 9 "Hart State Management" (hart 0 only) and chapter 10 "System Reset".
//! Anything else answers `SBI_ERR_NOT_SUPPORTED`.

use crate::hart::{Hart, SSIP};
use crate::ExitReason;

/// Extension IDs.
pub(crate) mod eid {
    pub const LEGACY_SET_TIMER: u64 = 0x00;
    pub const LEGACY_PUTCHAR: u64 = 0x01;
    pub const LEGACY_GETCHAR: u64 = 0x02;
    pub const LEGACY_CLEAR_IPI: u64 = 0x03;
    pub const LEGACY_SEND_IPI: u64 = 0x04;
    pub const LEGACY_FENCE_I: u64 = 0x05;
    pub const LEGACY_SFENCE_VMA: u64 = 0x06;
    pub const LEGACY_SFENCE_VMA_ASID: u64 = 0x07;
    pub const LEGACY_SHUTDOWN: u64 = 0x08;
    pub const BASE: u64 = 0x10;
    pub const TIME: u64 = 0x5449_4d45;
    pub const IPI: u64 = 0x73_5049;
    pub const RFENCE: u64 = 0x5246_4e43;
    pub const HSM: u64 = 0x48_534d;
    pub const SRST: u64 = 0x5352_5354;
}

/// SBI error codes (SBI v1.0.0 Table 1), as returned in a0.
pub(crate) mod err {
    pub const SUCCESS: i64 = 0;
    pub const FAILED: i64 = -1;
    pub const NOT_SUPPORTED: i64 = -2;
    pub const INVALID_PARAM: i64 = -3;
    pub const ALREADY_AVAILABLE: i64 = -6;
}

/// SBI specification version reported: 1.0 (major in bits 30:24, minor in 23:0).
pub const SPEC_VERSION: u64 = 1 << 24;
/// SBI implementation ID reported by `sbi_get_impl_id`. Not an ID from the SBI registry;
/// chosen to be unlike any registered one ("vm" in ASCII).
pub const IMPL_ID: u64 = 0x766d;
/// Implementation version: this crate's version as 0x00MMmmpp.
pub const IMPL_VERSION: u64 = 0x00_0100;

const A0: usize = 10;
const A1: usize = 11;
const A2: usize = 12;
const A6: usize = 16;
const A7: usize = 17;

/// True when `hart_mask`/`hart_mask_base` (SBI v1.0.0 §3.1 "hart list") names hart 0.
fn mask_has_hart0(mask: u64, base: u64) -> bool {
    base == u64::MAX || (base == 0 && mask & 1 != 0)
}

fn probe(ext: u64) -> bool {
    matches!(
        ext,
        eid::LEGACY_SET_TIMER
            ..=eid::LEGACY_SHUTDOWN
                | eid::BASE
                | eid::TIME
                | eid::IPI
                | eid::RFENCE
                | eid::HSM
                | eid::SRST
    )
}

impl Hart {
    /// Handles an S-mode `ecall` as an SBI call. Never fails: unknown calls answer
    /// `SBI_ERR_NOT_SUPPORTED`.
    pub(crate) fn sbi_call(&mut self) {
        let ext = self.x[A7];
        let fid = self.x[A6];
        let (a0, a1, a2) = (self.x[A0], self.x[A1], self.x[A2]);
        log::trace!("sbi: eid {ext:#x} fid {fid} a0 {a0:#x} a1 {a1:#x}");
        if ext <= eid::LEGACY_SHUTDOWN {
            let ret: i64 = match ext {
                eid::LEGACY_SET_TIMER => {
                    self.set_timer(a0);
                    0
                }
                eid::LEGACY_PUTCHAR => {
                    self.bus.uart.console_putchar(a0 as u8);
                    0
                }
                eid::LEGACY_GETCHAR => self.bus.uart.console_getchar().map_or(-1, i64::from),
                eid::LEGACY_CLEAR_IPI => {
                    self.sip &= !SSIP;
                    0
                }
                eid::LEGACY_SEND_IPI => {
                    // The mask is a pointer to guest memory; with one hart, every IPI is ours.
                    self.sip |= SSIP;
                    0
                }
                eid::LEGACY_FENCE_I => 0,
                eid::LEGACY_SFENCE_VMA | eid::LEGACY_SFENCE_VMA_ASID => {
                    self.flush_tlb();
                    0
                }
                _ => {
                    self.exit = Some(ExitReason::PowerOff);
                    0
                }
            };
            self.x[A0] = ret as u64;
            return;
        }
        let (error, value): (i64, u64) = match (ext, fid) {
            (eid::BASE, 0) => (err::SUCCESS, SPEC_VERSION),
            (eid::BASE, 1) => (err::SUCCESS, IMPL_ID),
            (eid::BASE, 2) => (err::SUCCESS, IMPL_VERSION),
            (eid::BASE, 3) => (err::SUCCESS, u64::from(probe(a0))),
            // mvendorid, marchid, mimpid: 0 = not implemented.
            (eid::BASE, 4..=6) => (err::SUCCESS, 0),
            (eid::TIME, 0) => {
                self.set_timer(a0);
                (err::SUCCESS, 0)
            }
            (eid::IPI, 0) => {
                if mask_has_hart0(a0, a1) {
                    self.sip |= SSIP;
                }
                (err::SUCCESS, 0)
            }
            // remote_fence_i: the decode cache is always coherent.
            (eid::RFENCE, 0) => (err::SUCCESS, 0),
            // remote_sfence_vma and remote_sfence_vma_asid.
            (eid::RFENCE, 1 | 2) => {
                if mask_has_hart0(a0, a1) {
                    self.flush_tlb();
                }
                (err::SUCCESS, 0)
            }
            (eid::HSM, 0) => {
                if a0 == 0 {
                    (err::ALREADY_AVAILABLE, 0)
                } else {
                    (err::INVALID_PARAM, 0)
                }
            }
            // hart_stop of the only hart: refuse.
            (eid::HSM, 1) => (err::FAILED, 0),
            (eid::HSM, 2) => {
                if a0 == 0 {
                    // SBI_HSM_STATE_STARTED.
                    (err::SUCCESS, 0)
                } else {
                    (err::INVALID_PARAM, 0)
                }
            }
            (eid::SRST, 0) => {
                let _ = a2;
                match a0 as u32 {
                    0 => {
                        log::info!("sbi: system shutdown (reason {})", a1 as u32);
                        self.exit = Some(ExitReason::PowerOff);
                        (err::SUCCESS, 0)
                    }
                    1 | 2 => {
                        log::info!(
                            "sbi: system reboot (type {}, reason {})",
                            a0 as u32,
                            a1 as u32
                        );
                        self.exit = Some(ExitReason::Reboot);
                        (err::SUCCESS, 0)
                    }
                    _ => (err::INVALID_PARAM, 0),
                }
            }
            _ => {
                log::debug!("sbi: unsupported call eid {ext:#x} fid {fid}");
                (err::NOT_SUPPORTED, 0)
            }
        };
        self.x[A0] = error as u64;
        self.x[A1] = value;
    }

    /// SBI set_timer: the timer interrupt fires when `time >= stime_value`; the call clears a
    /// pending one (SBI v1.0.0 §6.1).
    pub(crate) fn set_timer(&mut self, stime_value: u64) {
        self.timecmp = stime_value;
        self.sip &= !crate::hart::STIP;
    }
}
