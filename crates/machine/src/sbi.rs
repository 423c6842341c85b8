//! The Supervisor Binary Interface, implemented by the machine itself (there is no M-mode
//! firmware): an `ecall` from S-mode lands here, as under KVM RISC-V.
//!
//! Follows the RISC-V SBI specification v2.0: chapter 3 "Binary Encoding" (EID in a7, FID
//! in a6, arguments in a0..a5, error in a0 and value in a1; §3.1 hart lists), chapter 4
//! "Base Extension", chapter 5 "Legacy Extensions" (set_timer, console putchar/getchar,
//! clear/send IPI, remote fences, shutdown; result in a0 only; kept for guests built with
//! RISCV_SBI_V01, such as the default guest), chapter 6 "Timer", chapter 7 "IPI", chapter 8
//! "RFENCE", chapter 9 "Hart State Management", chapter 10 "System Reset" and chapter 12
//! "Debug Console". Anything else answers `SBI_ERR_NOT_SUPPORTED`.
//!
//! The machine has one hart, hart 0: a hart list naming any other hart is
//! `SBI_ERR_INVALID_PARAM`, fences are local TLB flushes, and IPIs set the hart's own SSIP.
//! Every argument is guest-controlled: addresses and lengths are checked against RAM, and
//! the work of one call is bounded (a DBCN transfer moves at most [`DBCN_MAX_BYTES`]).

use vm_memory::{Bytes, GuestAddress};

use crate::hart::{Hart, SSIP};
use crate::ExitReason;

/// Extension IDs (SBI v2.0 chapters 4 to 12).
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
    /// "TIME"
    pub const TIME: u64 = 0x5449_4d45;
    /// "sPI"
    pub const IPI: u64 = 0x73_5049;
    /// "RFNC"
    pub const RFENCE: u64 = 0x5246_4e43;
    /// "HSM"
    pub const HSM: u64 = 0x48_534d;
    /// "SRST"
    pub const SRST: u64 = 0x5352_5354;
    /// "DBCN"
    pub const DBCN: u64 = 0x4442_434e;
}

/// SBI error codes (SBI v2.0 Table 1), as returned in a0.
pub(crate) mod err {
    pub const SUCCESS: i64 = 0;
    pub const FAILED: i64 = -1;
    pub const NOT_SUPPORTED: i64 = -2;
    pub const INVALID_PARAM: i64 = -3;
    pub const ALREADY_AVAILABLE: i64 = -6;
}

/// HSM hart states (SBI v2.0 Table 22).
pub(crate) mod hart_state {
    pub const STARTED: u64 = 0;
}

/// SBI specification version reported: 2.0 (major in bits 30:24, minor in 23:0).
pub const SPEC_VERSION: u64 = 2 << 24;
/// SBI implementation ID reported by `sbi_get_impl_id`. Not an ID from the SBI registry;
/// chosen to be unlike any registered one ("vm" in ASCII).
pub const IMPL_ID: u64 = 0x766d;
/// Implementation version: 0x00MMmmpp, bumped with what the SBI implements (2.0.0 here).
pub const IMPL_VERSION: u64 = 0x00_0200;
/// Most bytes one DBCN console_write or console_read moves; the call returns how many it
/// moved and the guest (Linux does) calls again for the rest (SBI v2.0 §12.1, §12.2).
pub const DBCN_MAX_BYTES: u64 = 4096;

/// HSM hart_suspend types (SBI v2.0 Table 23).
const SUSPEND_RETENTIVE: u32 = 0;
const SUSPEND_NON_RETENTIVE: u32 = 0x8000_0000;
/// SRST reset types and reasons (SBI v2.0 Tables 26 and 27).
const RESET_SHUTDOWN: u32 = 0;
const RESET_COLD_REBOOT: u32 = 1;
const RESET_WARM_REBOOT: u32 = 2;
const REASON_NONE: u32 = 0;
const REASON_SYSTEM_FAILURE: u32 = 1;

const A0: usize = 10;
const A1: usize = 11;
const A2: usize = 12;
const A6: usize = 16;
const A7: usize = 17;

/// Which harts a hart list (`hart_mask`, `hart_mask_base`; SBI v2.0 §3.1) names, on a
/// machine whose only hart is hart 0.
#[derive(Debug, PartialEq, Eq)]
enum HartList {
    /// Hart 0 is named (or all harts are: base -1).
    Hart0,
    /// The list names no hart at all (mask 0): nothing to do.
    Empty,
    /// A hart ID that does not exist is named.
    Invalid,
}

fn hart_list(mask: u64, base: u64) -> HartList {
    if base == u64::MAX {
        return HartList::Hart0;
    }
    if mask == 0 {
        return HartList::Empty;
    }
    // Hart `base + i` for every set bit i: only hart 0 exists, so the list is valid only
    // if it is exactly {0}: base 0 and bit 0 alone.
    if base == 0 && mask == 1 {
        HartList::Hart0
    } else {
        HartList::Invalid
    }
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
                | eid::DBCN
    )
}

/// The reset reason as the log names it.
fn reason_name(reason: u32) -> &'static str {
    match reason {
        REASON_NONE => "no reason",
        REASON_SYSTEM_FAILURE => "system failure",
        0xe000_0000..=0xefff_ffff => "SBI implementation specific",
        0xf000_0000..=0xffff_ffff => "vendor specific",
        _ => "reserved",
    }
}

/// One SBI v0.2+ call's result: (error, value).
type SbiRet = (i64, u64);

impl Hart {
    /// Handles an S-mode `ecall` as an SBI call. Never fails: unknown calls answer
    /// `SBI_ERR_NOT_SUPPORTED`.
    pub(crate) fn sbi_call(&mut self) {
        let ext = self.x[A7];
        let fid = self.x[A6];
        log::trace!(
            "sbi: eid {ext:#x} fid {fid} a0 {:#x} a1 {:#x} a2 {:#x}",
            self.x[A0],
            self.x[A1],
            self.x[A2]
        );
        if ext <= eid::LEGACY_SHUTDOWN {
            let ret = self.sbi_legacy(ext, self.x[A0]);
            self.x[A0] = ret as u64;
            return;
        }
        let a = [self.x[A0], self.x[A1], self.x[A2]];
        let (error, value) = match ext {
            eid::BASE => self.sbi_base(fid, a),
            eid::TIME if fid == 0 => {
                self.set_timer(a[0]);
                (err::SUCCESS, 0)
            }
            eid::IPI if fid == 0 => match hart_list(a[0], a[1]) {
                HartList::Hart0 => {
                    self.sip |= SSIP;
                    (err::SUCCESS, 0)
                }
                HartList::Empty => (err::SUCCESS, 0),
                HartList::Invalid => (err::INVALID_PARAM, 0),
            },
            eid::RFENCE => self.sbi_rfence(fid, a),
            eid::HSM => self.sbi_hsm(fid, a),
            eid::SRST if fid == 0 => self.sbi_system_reset(a[0], a[1]),
            eid::DBCN => self.sbi_dbcn(fid, a),
            _ => (err::NOT_SUPPORTED, 0),
        };
        if error == err::NOT_SUPPORTED {
            log::debug!("sbi: unsupported call eid {ext:#x} fid {fid}");
        }
        self.x[A0] = error as u64;
        self.x[A1] = value;
    }

    /// The legacy extensions (SBI v2.0 chapter 5): result in a0 only.
    fn sbi_legacy(&mut self, ext: u64, a0: u64) -> i64 {
        match ext {
            eid::LEGACY_SET_TIMER => self.set_timer(a0),
            eid::LEGACY_PUTCHAR => self.bus.uart.console_putchar(a0 as u8),
            eid::LEGACY_GETCHAR => return self.bus.uart.console_getchar().map_or(-1, i64::from),
            eid::LEGACY_CLEAR_IPI => self.sip &= !SSIP,
            // The mask is a pointer to guest memory; with one hart, every IPI is ours.
            eid::LEGACY_SEND_IPI => self.sip |= SSIP,
            eid::LEGACY_FENCE_I => self.code_changed(),
            eid::LEGACY_SFENCE_VMA | eid::LEGACY_SFENCE_VMA_ASID => self.flush_tlb(),
            _ => {
                log::info!("sbi: legacy shutdown");
                self.exit = Some(ExitReason::PowerOff);
            }
        }
        0
    }

    /// Base extension (SBI v2.0 chapter 4).
    fn sbi_base(&mut self, fid: u64, a: [u64; 3]) -> SbiRet {
        match fid {
            0 => (err::SUCCESS, SPEC_VERSION),
            1 => (err::SUCCESS, IMPL_ID),
            2 => (err::SUCCESS, IMPL_VERSION),
            3 => (err::SUCCESS, u64::from(probe(a[0]))),
            // mvendorid, marchid, mimpid: 0 = not implemented (the values of those CSRs).
            4..=6 => (err::SUCCESS, 0),
            _ => (err::NOT_SUPPORTED, 0),
        }
    }

    /// RFENCE (SBI v2.0 chapter 8): fence.i and sfence.vma on hart 0, which are local.
    fn sbi_rfence(&mut self, fid: u64, a: [u64; 3]) -> SbiRet {
        // 3..=6 are the hypervisor fences: no H extension here.
        if fid > 2 {
            return (err::NOT_SUPPORTED, 0);
        }
        match hart_list(a[0], a[1]) {
            HartList::Invalid => (err::INVALID_PARAM, 0),
            HartList::Empty => (err::SUCCESS, 0),
            HartList::Hart0 => {
                // remote_fence_i (fid 0): cached blocks are checked against memory again.
                // remote_sfence_vma(_asid) (1, 2): the whole TLB, a superset of any range.
                if fid == 0 {
                    self.code_changed();
                } else {
                    self.flush_tlb();
                }
                (err::SUCCESS, 0)
            }
        }
    }

    /// Hart State Management (SBI v2.0 chapter 9) for one hart that is always started.
    fn sbi_hsm(&mut self, fid: u64, a: [u64; 3]) -> SbiRet {
        match fid {
            // hart_start(hartid, start_addr, opaque): hart 0 runs already.
            0 if a[0] == 0 => (err::ALREADY_AVAILABLE, 0),
            0 => (err::INVALID_PARAM, 0),
            // hart_stop: stopping the only hart would leave nothing to start it again.
            1 => (err::FAILED, 0),
            // hart_get_status(hartid).
            2 if a[0] == 0 => (err::SUCCESS, hart_state::STARTED),
            2 => (err::INVALID_PARAM, 0),
            // hart_suspend(suspend_type, resume_addr, opaque).
            3 => match a[0] as u32 {
                _ if a[0] > u64::from(u32::MAX) => (err::INVALID_PARAM, 0),
                // Default retentive suspend: as WFI, resumes after the ecall once an
                // interrupt is pending (even with SIE clear).
                SUSPEND_RETENTIVE => {
                    self.wfi = true;
                    self.break_batch = true;
                    (err::SUCCESS, 0)
                }
                // Default non-retentive suspend: implemented types, but resuming at
                // resume_addr with the MMU off is not (Linux uses it only with idle states
                // in the device tree, and ours lists none).
                SUSPEND_NON_RETENTIVE => (err::NOT_SUPPORTED, 0),
                // Reserved and platform-specific types: none is implemented.
                _ => (err::INVALID_PARAM, 0),
            },
            _ => (err::NOT_SUPPORTED, 0),
        }
    }

    /// System Reset (SBI v2.0 chapter 10): shutdown ends the run with
    /// [`ExitReason::PowerOff`], a cold or warm reboot with [`ExitReason::Reboot`].
    fn sbi_system_reset(&mut self, reset_type: u64, reason: u64) -> SbiRet {
        let (Ok(reset_type), Ok(reason)) = (u32::try_from(reset_type), u32::try_from(reason))
        else {
            return (err::INVALID_PARAM, 0);
        };
        let reason_ok = matches!(reason, REASON_NONE | REASON_SYSTEM_FAILURE | 0xe000_0000..);
        let exit = match reset_type {
            RESET_SHUTDOWN => Some(ExitReason::PowerOff),
            RESET_COLD_REBOOT | RESET_WARM_REBOOT => Some(ExitReason::Reboot),
            // Vendor-specific types: valid encodings, none implemented.
            0xf000_0000.. => None,
            // The rest is reserved.
            _ => return (err::INVALID_PARAM, 0),
        };
        if !reason_ok {
            return (err::INVALID_PARAM, 0);
        }
        let Some(exit) = exit else {
            return (err::NOT_SUPPORTED, 0);
        };
        let what = match reset_type {
            RESET_SHUTDOWN => "shutdown",
            RESET_COLD_REBOOT => "cold reboot",
            _ => "warm reboot",
        };
        log::info!(
            "sbi: system {what} (reason {reason:#x}: {})",
            reason_name(reason)
        );
        self.exit = Some(exit);
        (err::SUCCESS, 0)
    }

    /// Debug Console (SBI v2.0 chapter 12) on the UART's sink and receive queue.
    fn sbi_dbcn(&mut self, fid: u64, a: [u64; 3]) -> SbiRet {
        match fid {
            0 | 1 => {
                // (num_bytes, base_addr_lo, base_addr_hi): on RV64 the address is
                // base_addr_lo; a non-zero base_addr_hi is beyond any physical address.
                let (len, pa, hi) = (a[0], a[1], a[2]);
                if hi != 0 || self.bus.ram.offset(pa, len).is_none() {
                    return (err::INVALID_PARAM, 0);
                }
                let n = len.min(DBCN_MAX_BYTES);
                // `n <= DBCN_MAX_BYTES`, so it fits usize.
                let mut buf = vec![0u8; n as usize];
                if fid == 0 {
                    if self
                        .bus
                        .ram
                        .memory()
                        .read_slice(&mut buf, GuestAddress(pa))
                        .is_err()
                    {
                        return (err::FAILED, 0);
                    }
                    self.bus.uart.console_write(&buf);
                    (err::SUCCESS, n)
                } else {
                    let got = self.bus.uart.console_read(buf.len());
                    // The guest may read console input over its own code.
                    self.code_changed();
                    if self
                        .bus
                        .ram
                        .memory()
                        .write_slice(&got, GuestAddress(pa))
                        .is_err()
                    {
                        return (err::FAILED, 0);
                    }
                    (err::SUCCESS, got.len() as u64)
                }
            }
            // console_write_byte(byte): the low 8 bits.
            2 => {
                self.bus.uart.console_putchar(a[0] as u8);
                (err::SUCCESS, 0)
            }
            _ => (err::NOT_SUPPORTED, 0),
        }
    }

    /// SBI set_timer: the timer interrupt fires when `time >= stime_value`; the call clears a
    /// pending one (SBI v2.0 §6.1).
    pub(crate) fn set_timer(&mut self, stime_value: u64) {
        self.timecmp = stime_value;
        self.sip &= !crate::hart::STIP;
    }
}

#[cfg(test)]
#[path = "sbi_tests.rs"]
mod tests;
