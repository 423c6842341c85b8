//! The hart: an RV64IMAFDC + Zicsr + Zifencei interpreter with S and U modes and Sv39.
//!
//! What it implements, by RISC-V Privileged Architecture (20211203) section:
//! - §4.1 "Supervisor CSRs": `sstatus` (SIE, SPIE, SPP, SUM, MXR, FS; SD = FS is Dirty; UXL
//!   reads 2), `sie`/`sip` (SSIP writable, STIP from the SBI timer, SEIP from the PLIC), `stvec` (direct and
//!   vectored), `scounteren`, `sscratch`, `sepc`, `scause`, `stval`, `satp`, `senvcfg`
//!   (reads 0); the unprivileged counters `cycle`, `time`, `instret` (and `hpmcounter3..31`
//!   reading 0), gated for U-mode by `scounteren`.
//! - §3.1.6.1 / §4.1.1 trap entry and `sret`: every trap goes to S-mode (there is no M-mode;
//!   S-mode `ecall` is the SBI, see [`crate::sbi`]).
//! - §4.3 / §4.4 "Sv39": three-level walk, permission checks with SUM and MXR, misaligned
//!   superpages, A/D bits set in the PTE on access (the "hardware updating" option of §4.3.1),
//!   `sfence.vma`, `satp` modes Bare and Sv39 (writes of other modes are ignored, ASIDLEN 0).
//!
//! Compressed instructions (C) are expanded to their 32-bit equivalents by the decoder; the
//! hart keeps their length (2) for the next pc and link addresses. IALIGN is 16: the pc is
//! 2-aligned, and a 32-bit instruction may straddle two pages (two translations).
//!
//! Speed: code runs as decoded blocks with a pre-resolved handler per instruction (the
//! `blocks` module: straight-line runs keyed by physical address, every instruction checked
//! against memory before it runs, so code written by anyone is never run stale); the
//! one-at-a-time interpreter below (`step`, `exec`) serves tracing, page-straddling
//! instructions and everything without a fast handler. Its own decode cache is indexed by the
//! pc and validated by the instruction bits. Instruction fetch reuses the translation of the
//! current page; loads and stores go through a software TLB (1024 entries, direct-mapped,
//! flushed on `sfence.vma` and `satp` writes) whose entries carry the PTE's R/W/X/U/D bits,
//! checked against a permission mask for the current privilege, SUM and MXR; RAM is reached
//! through a host pointer, devices only on the slow path. Interrupts and timers are checked
//! between batches of instructions, and a batch ends early (at the end of the current block)
//! after any CSR write, `sret`, `wfi`, MMIO access or SBI call that may change what is
//! pending.
//!
//! Misaligned loads and stores are carried out byte by byte (no exception; Linux without M-mode
//! firmware could not emulate them); misaligned LR/SC/AMOs raise address-misaligned
//! exceptions as the A extension requires.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

mod blocks;
mod memory;

use crate::bus::Bus;
use crate::decode::{decode, AmoOp, Insn, Kind};
use crate::fpu::{self, FpState};
use crate::layout::TIMEBASE_HZ;
use crate::plic::IrqShared;
use crate::trap_loop::{TrapLoopGuard, TRAP_LOOP_LIMIT};
use crate::ExitReason;

/// CSR numbers (Privileged spec Table 2.2 and §4.1).
pub(crate) mod csr {
    pub const SSTATUS: u16 = 0x100;
    pub const SIE: u16 = 0x104;
    pub const STVEC: u16 = 0x105;
    pub const SCOUNTEREN: u16 = 0x106;
    pub const SENVCFG: u16 = 0x10a;
    pub const SSCRATCH: u16 = 0x140;
    pub const SEPC: u16 = 0x141;
    pub const SCAUSE: u16 = 0x142;
    pub const STVAL: u16 = 0x143;
    pub const SIP: u16 = 0x144;
    pub const SATP: u16 = 0x180;
    pub const CYCLE: u16 = 0xc00;
    pub const TIME: u16 = 0xc01;
    pub const INSTRET: u16 = 0xc02;
    pub const HPMCOUNTER31: u16 = 0xc1f;
}

/// Exception codes of `scause` (Privileged spec Table 4.2).
pub(crate) mod cause {
    pub const INSN_MISALIGNED: u64 = 0;
    pub const INSN_ACCESS_FAULT: u64 = 1;
    pub const ILLEGAL_INSN: u64 = 2;
    pub const BREAKPOINT: u64 = 3;
    pub const LOAD_MISALIGNED: u64 = 4;
    pub const LOAD_ACCESS_FAULT: u64 = 5;
    pub const STORE_MISALIGNED: u64 = 6;
    pub const STORE_ACCESS_FAULT: u64 = 7;
    pub const ECALL_U: u64 = 8;
    pub const INSN_PAGE_FAULT: u64 = 12;
    pub const LOAD_PAGE_FAULT: u64 = 13;
    pub const STORE_PAGE_FAULT: u64 = 15;
    /// Interrupt codes (with bit 63 set in `scause`).
    pub const IRQ_S_SOFT: u64 = 1;
    pub const IRQ_S_TIMER: u64 = 5;
    pub const IRQ_S_EXT: u64 = 9;
}

/// `sstatus` bits (Privileged spec §4.1.1).
pub(crate) mod sstatus {
    pub const SIE: u64 = 1 << 1;
    pub const SPIE: u64 = 1 << 5;
    pub const SPP: u64 = 1 << 8;
    pub const SUM: u64 = 1 << 18;
    pub const MXR: u64 = 1 << 19;
    /// FP unit state (bits 14:13): Off 0, Initial 1, Clean 2, Dirty 3 (see [`crate::fpu`]).
    pub const FS: u64 = 3 << 13;
    /// UXL = 2 (64-bit U-mode), read-only.
    pub const UXL64: u64 = 2 << 32;
    /// Reads as 1 when FS is Dirty (XS and VS are always Off here).
    pub const SD: u64 = 1 << 63;
    pub const WRITABLE: u64 = SIE | SPIE | SPP | SUM | MXR | FS;
}

/// `sip`/`sie` bits (Privileged spec §4.1.3).
pub(crate) const SSIP: u64 = 1 << cause::IRQ_S_SOFT;
pub(crate) const STIP: u64 = 1 << cause::IRQ_S_TIMER;
pub(crate) const SEIP: u64 = 1 << cause::IRQ_S_EXT;
const SIE_WRITABLE: u64 = SSIP | STIP | SEIP;

/// Sv39 PTE bits (Privileged spec §4.4.1).
mod pte {
    pub const V: u64 = 1 << 0;
    pub const R: u64 = 1 << 1;
    pub const W: u64 = 1 << 2;
    pub const X: u64 = 1 << 3;
    pub const U: u64 = 1 << 4;
    pub const A: u64 = 1 << 6;
    pub const D: u64 = 1 << 7;
    /// PPN field width in bits.
    pub const PPN_MASK: u64 = (1 << 44) - 1;
}

/// `satp` fields (Privileged spec §4.1.11): MODE 63:60, ASID 59:44 (ASIDLEN 0 here), PPN 43:0.
const SATP_MODE_SV39: u64 = 8;
const SATP_PPN_MASK: u64 = (1 << 44) - 1;

/// Privilege mode of the hart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Privilege {
    /// U-mode (encoding 0).
    User = 0,
    /// S-mode (encoding 1).
    Supervisor = 1,
}

/// A synchronous exception: `scause` code and `stval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Trap {
    pub cause: u64,
    pub tval: u64,
}

impl Trap {
    pub(crate) fn illegal(raw: u32) -> Self {
        Trap {
            cause: cause::ILLEGAL_INSN,
            tval: u64::from(raw),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Read = 0,
    Write = 1,
    Exec = 2,
}

impl Access {
    fn page_fault(self, va: u64) -> Trap {
        let cause = match self {
            Access::Read => cause::LOAD_PAGE_FAULT,
            Access::Write => cause::STORE_PAGE_FAULT,
            Access::Exec => cause::INSN_PAGE_FAULT,
        };
        Trap { cause, tval: va }
    }

    fn access_fault(self, va: u64) -> Trap {
        let cause = match self {
            Access::Read => cause::LOAD_ACCESS_FAULT,
            Access::Write => cause::STORE_ACCESS_FAULT,
            Access::Exec => cause::INSN_ACCESS_FAULT,
        };
        Trap { cause, tval: va }
    }
}

/// Number of software-TLB entries (power of two).
const TLB_SIZE: usize = 1024;
/// Number of decode-cache entries (power of two).
const DCACHE_SIZE: usize = 1 << 16;
/// An invalid TLB tag (virtual page numbers have at most 52 bits).
const TLB_INVALID: u64 = u64::MAX;

/// One TLB entry: virtual page number tag, and the physical page address with the compact
/// PTE flags (R W X U D in bits 0..=4) in its low bits.
#[derive(Clone, Copy)]
struct TlbEntry {
    vpn: u64,
    pa_flags: u64,
}

#[derive(Clone, Copy)]
struct DecodedEntry {
    raw: u32,
    insn: Insn,
}

/// Permission masks for (read, write, exec): bit `f` is set when a TLB entry with compact
/// flags `f` (R=1 W=2 X=4 U=8 D=16) allows the access for this privilege, SUM and MXR.
const fn perm_masks(user: bool, sum: bool, mxr: bool) -> [u32; 3] {
    let mut m = [0u32; 3];
    let mut f = 0u32;
    while f < 32 {
        let (r, w, x, u, d) = (f & 1 != 0, f & 2 != 0, f & 4 != 0, f & 8 != 0, f & 16 != 0);
        let data_ok = if user { u } else { !u || sum };
        if (r || (x && mxr)) && data_ok {
            m[0] |= 1 << f;
        }
        if w && d && data_ok {
            m[1] |= 1 << f;
        }
        if x && (if user { u } else { !u }) {
            m[2] |= 1 << f;
        }
        f += 1;
    }
    m
}

/// [`perm_masks`] for index `user | sum << 1 | mxr << 2`.
const PERMS: [[u32; 3]; 8] = [
    perm_masks(false, false, false),
    perm_masks(true, false, false),
    perm_masks(false, true, false),
    perm_masks(true, true, false),
    perm_masks(false, false, true),
    perm_masks(true, false, true),
    perm_masks(false, true, true),
    perm_masks(true, true, true),
];

fn sext32(v: u64) -> u64 {
    v as u32 as i32 as i64 as u64
}

/// The hart and the bus it drives.
pub(crate) struct Hart {
    /// Integer registers; `x[0]` is forced to 0 after every instruction.
    pub(crate) x: [u64; 32],
    /// The F/D register file and `fcsr`.
    pub(crate) fp: FpState,
    pub(crate) pc: u64,
    pub(crate) prv: Privilege,
    pub(crate) sstatus: u64,
    pub(crate) sie: u64,
    pub(crate) sip: u64,
    pub(crate) stvec: u64,
    pub(crate) scounteren: u64,
    pub(crate) sscratch: u64,
    pub(crate) sepc: u64,
    pub(crate) scause: u64,
    pub(crate) stval: u64,
    pub(crate) satp: u64,
    /// SBI timer compare value, in `time` ticks; `u64::MAX` = off.
    pub(crate) timecmp: u64,
    /// Retired instructions (also read as `cycle`).
    pub(crate) instret: u64,
    /// LR reservation: physical address.
    reservation: Option<u64>,
    mmu_on: bool,
    perms: [u32; 3],
    tlb: Box<[TlbEntry; TLB_SIZE]>,
    fetch_vpn: u64,
    fetch_off: usize,
    dcache: Box<[DecodedEntry; DCACHE_SIZE]>,
    pub(crate) bus: Bus,
    pub(crate) irq: Arc<IrqShared>,
    clock: Instant,
    /// Set by the SBI when the guest asks to stop, or by the trap-loop budget.
    pub(crate) exit: Option<ExitReason>,
    trap_loop: TrapLoopGuard,
    /// Decoded blocks (the fast path, see [`blocks`]).
    blocks: blocks::Blocks,
    /// One byte per RAM page: nonzero while blocks decoded from the page may be cached, so
    /// that the hart's own stores there move `code_epoch` on.
    code_pages: Box<[u8]>,
    /// Moves on whenever code may have changed (a hart store to a code page, FENCE.I, an
    /// SBI remote fence.i, a new run): a block decoded in an older epoch is compared with
    /// memory before it runs again.
    code_epoch: u64,
    /// Where a block handler leaves its trap.
    trap: Trap,
    /// Ends the current batch after this instruction (pending interrupts may have changed).
    pub(crate) break_batch: bool,
    /// The hart executed WFI and waits for an interrupt.
    pub(crate) wfi: bool,
    pub(crate) trace: Option<Box<dyn Write + Send>>,
}

impl Hart {
    pub(crate) fn new(bus: Bus, irq: Arc<IrqShared>) -> Self {
        let tlb: Box<[TlbEntry; TLB_SIZE]> = vec![
            TlbEntry {
                vpn: TLB_INVALID,
                pa_flags: 0
            };
            TLB_SIZE
        ]
        .into_boxed_slice()
        .try_into()
        .unwrap_or_else(|_| unreachable!("length is TLB_SIZE"));
        let dcache: Box<[DecodedEntry; DCACHE_SIZE]> = vec![
            DecodedEntry {
                raw: 0,
                insn: decode(0)
            };
            DCACHE_SIZE
        ]
        .into_boxed_slice()
        .try_into()
        .unwrap_or_else(|_| unreachable!("length is DCACHE_SIZE"));
        let ram_pages = usize::try_from(bus.ram.len().div_ceil(4096)).unwrap_or(0);
        let mut hart = Self {
            x: [0; 32],
            fp: FpState::default(),
            pc: 0,
            prv: Privilege::Supervisor,
            sstatus: 0,
            sie: 0,
            sip: 0,
            stvec: 0,
            // The machine plays the firmware's part and lets U-mode read cycle, time and
            // instret (the vDSO reads `time`), as OpenSBI + Linux's SBI PMU driver would.
            scounteren: 0x7,
            sscratch: 0,
            sepc: 0,
            scause: 0,
            stval: 0,
            satp: 0,
            timecmp: u64::MAX,
            instret: 0,
            reservation: None,
            mmu_on: false,
            perms: PERMS[0],
            tlb,
            fetch_vpn: TLB_INVALID,
            fetch_off: 0,
            dcache,
            bus,
            irq,
            clock: Instant::now(),
            exit: None,
            trap_loop: TrapLoopGuard::default(),
            // Allocated by the first batch that uses it (a tracing machine never does).
            blocks: blocks::Blocks::empty(),
            code_pages: vec![0; ram_pages].into_boxed_slice(),
            code_epoch: 0,
            trap: Trap { cause: 0, tval: 0 },
            break_batch: false,
            wfi: false,
            trace: None,
        };
        hart.set_priv(Privilege::Supervisor);
        hart
    }

    /// The `time` CSR: ticks of [`TIMEBASE_HZ`] since the machine was created.
    pub(crate) fn time(&self) -> u64 {
        let d = self.clock.elapsed();
        d.as_secs()
            .wrapping_mul(TIMEBASE_HZ)
            .wrapping_add(u64::from(d.subsec_nanos()) * TIMEBASE_HZ / 1_000_000_000)
    }

    fn set_priv(&mut self, prv: Privilege) {
        self.prv = prv;
        self.update_perms();
        self.fetch_vpn = TLB_INVALID;
    }

    fn update_perms(&mut self) {
        let idx = (self.prv == Privilege::User) as usize
            | (((self.sstatus & sstatus::SUM != 0) as usize) << 1)
            | (((self.sstatus & sstatus::MXR != 0) as usize) << 2);
        self.perms = PERMS[idx];
    }

    /// Whether blocks decoded from the RAM page of offset `off` may be cached.
    #[inline(always)]
    fn is_code(&self, off: usize) -> bool {
        self.code_pages.get(off >> 12).is_some_and(|&b| b != 0)
    }

    /// The hart (or the machine on its behalf) wrote RAM offset `off`: when blocks were
    /// decoded from that page, they are checked against memory before they run again.
    #[inline(always)]
    fn note_store(&mut self, off: usize) {
        if self.is_code(off) {
            self.code_written(off);
        }
    }

    /// Guest RAM at physical `pa` was written by the hart outside the load/store path.
    fn note_store_pa(&mut self, pa: u64) {
        if let Some(off) = self.bus.ram.offset(pa, 1) {
            self.note_store(off);
        }
    }

    #[cold]
    fn code_written(&mut self, off: usize) {
        if let Some(b) = self.code_pages.get_mut(off >> 12) {
            *b = 0;
        }
        self.code_changed();
    }

    /// Code anywhere in RAM may have changed (FENCE.I, or memory written behind the hart's
    /// back, such as device DMA or the loader): every cached block is compared with memory
    /// before it runs again.
    pub(crate) fn code_changed(&mut self) {
        // A u64 epoch never wraps.
        self.code_epoch = self.code_epoch.wrapping_add(1);
    }

    pub(crate) fn flush_tlb(&mut self) {
        for e in self.tlb.iter_mut() {
            e.vpn = TLB_INVALID;
        }
        self.fetch_vpn = TLB_INVALID;
    }

    // ---- execution -------------------------------------------------------------------

    /// `decode(raw)` through the decode cache, here keyed by the instruction bits (code
    /// repeats the same words: prologues, returns, moves); `raw` as [`Hart::step`] keys it
    /// (the low half alone for a compressed instruction). Entries hold `(raw, decode(raw))`,
    /// so sharing the cache with `step`'s pc-keyed lookups is safe.
    pub(super) fn decode_cached(&mut self, raw: u32) -> Insn {
        let slot = (raw.wrapping_mul(0x9e37_79b1) >> 16) as usize & (DCACHE_SIZE - 1);
        let entry = self.dcache[slot];
        if entry.raw == raw {
            return entry.insn;
        }
        let insn = decode(raw);
        self.dcache[slot] = DecodedEntry { raw, insn };
        insn
    }

    /// Runs at most `budget` instructions; stops early when `break_batch` is set. Returns
    /// the number of instructions attempted (including ones that trapped).
    pub(crate) fn run_batch<const TRACE: bool>(&mut self, budget: u64) -> u64 {
        self.break_batch = false;
        if !TRACE {
            return self.run_blocks(budget);
        }
        let mut n = 0;
        while n < budget {
            n += 1;
            if let Err(t) = self.step::<TRACE>() {
                self.take_trap(t.cause, t.tval, false);
            }
            if self.break_batch {
                break;
            }
        }
        n
    }

    #[inline(always)]
    fn step<const TRACE: bool>(&mut self) -> Result<(), Trap> {
        let pc = self.pc;
        let in_page = (pc & 0xfff) as usize;
        // Fast path: the cached fetch page, and 4 bytes of it left from `pc` (a 32-bit
        // instruction at 0xffe straddles into the next page: slow path).
        let raw = if pc >> 12 == self.fetch_vpn && in_page <= 0xffc && pc & 1 == 0 {
            let off = self.fetch_off + in_page;
            if off & 3 == 0 {
                // SAFETY: the fetch page was checked to be RAM when cached (`fetch_slow`:
                // `offset(page, 4096)`) and `in_page <= 0xffc`, so `off + 4 <= len`; `off`
                // is 4-aligned (checked).
                unsafe { self.bus.ram.load::<4>(off) as u32 }
            } else {
                // SAFETY: as above, `off + 4 <= len`; `pc` is 2-aligned (checked), hence
                // `off` and `off + 2` too.
                let lo = unsafe { self.bus.ram.load::<2>(off) } as u32;
                if lo & 3 == 3 {
                    // SAFETY: as above.
                    lo | (unsafe { self.bus.ram.load::<2>(off + 2) } as u32) << 16
                } else {
                    lo
                }
            }
        } else {
            self.fetch_slow(pc)?
        };
        // A compressed instruction is its low half: the decode cache is keyed by it alone.
        let raw = if raw & 3 == 3 { raw } else { raw & 0xffff };
        let slot = ((pc >> 1) as usize) & (DCACHE_SIZE - 1);
        let entry = self.dcache[slot];
        let insn = if entry.raw == raw {
            entry.insn
        } else {
            let insn = decode(raw);
            self.dcache[slot] = DecodedEntry { raw, insn };
            insn
        };
        if TRACE {
            self.trace_insn(pc, raw, &insn);
        }
        self.exec(insn, pc, raw)?;
        self.instret = self.instret.wrapping_add(1);
        Ok(())
    }

    #[cold]
    fn trace_insn(&mut self, pc: u64, raw: u32, insn: &Insn) {
        if let Some(t) = self.trace.as_mut() {
            let name = format!("{:?}", insn.kind).to_ascii_lowercase();
            // A trace sink that fails must not stop the guest.
            let _ = if raw & 3 == 3 {
                writeln!(t, "0x{pc:016x}:  {raw:08x}  {name}")
            } else {
                writeln!(t, "0x{pc:016x}:      {raw:04x}  {name}")
            };
        }
    }

    /// Translates the page of `pc` for instruction fetch and caches it (`fetch_vpn`,
    /// `fetch_off`); returns its RAM offset.
    #[inline(never)]
    fn fetch_page(&mut self, pc: u64) -> Result<usize, Trap> {
        if pc & 1 != 0 {
            return Err(Trap {
                cause: cause::INSN_MISALIGNED,
                tval: pc,
            });
        }
        let pa = self.translate(pc, Access::Exec)?;
        let page = self
            .bus
            .ram
            .offset(pa & !0xfff, 4096)
            .ok_or(Access::Exec.access_fault(pc))?;
        self.fetch_vpn = pc >> 12;
        self.fetch_off = page;
        Ok(page)
    }

    /// Fetches the instruction at `pc` through a new translation, caching the page for the
    /// fast path. A 32-bit instruction at the end of a page takes its high half from the next
    /// page, translated on its own: a fault there reports that page's address in `stval`
    /// (Privileged spec §4.1.9: the faulting portion of the instruction) with `sepc` = `pc`.
    #[inline(never)]
    fn fetch_slow(&mut self, pc: u64) -> Result<u32, Trap> {
        let page = self.fetch_page(pc)?;
        let off = page + (pc & 0xfff) as usize;
        // SAFETY: `fetch_page` proved the whole page RAM (`offset(page, 4096)`), and `off` is 2-aligned
        // inside it (checked above), so `off + 2 <= len`.
        let lo = unsafe { self.bus.ram.load::<2>(off) } as u32;
        if lo & 3 != 3 {
            return Ok(lo);
        }
        let hi_off = if pc & 0xfff != 0xffe {
            off + 2
        } else {
            let hi_va = pc.wrapping_add(2);
            let hi_pa = self.translate(hi_va, Access::Exec)?;
            self.bus
                .ram
                .offset(hi_pa, 2)
                .ok_or(Access::Exec.access_fault(hi_va))?
        };
        // SAFETY: either `off + 2` inside the checked page (`pc & 0xfff < 0xffe`), or proved
        // by `offset(hi_pa, 2)`; both 2-aligned.
        let hi = unsafe { self.bus.ram.load::<2>(hi_off) } as u32;
        Ok(lo | hi << 16)
    }

    #[inline(always)]
    fn exec(&mut self, i: Insn, pc: u64, raw: u32) -> Result<(), Trap> {
        let rs1 = self.x[i.rs1 as usize & 31];
        let rs2 = self.x[i.rs2 as usize & 31];
        let imm = i.imm as i64 as u64;
        let rd = i.rd as usize & 31;
        // The instruction's length: 2 bytes when compressed (`raw` is then its 16 bits).
        let mut next = pc.wrapping_add(if raw & 3 == 3 { 4 } else { 2 });
        // With C (IALIGN = 16) no jump or branch target is misaligned: offsets are even and
        // JALR clears bit 0.
        match i.kind {
            Kind::Lui => self.x[rd] = imm,
            Kind::Auipc => self.x[rd] = pc.wrapping_add(imm),
            Kind::Jal => {
                self.x[rd] = next;
                next = pc.wrapping_add(imm);
            }
            Kind::Jalr => {
                self.x[rd] = next;
                next = rs1.wrapping_add(imm) & !1;
            }
            Kind::Beq | Kind::Bne | Kind::Blt | Kind::Bge | Kind::Bltu | Kind::Bgeu => {
                if branch_taken(i.kind, rs1, rs2) {
                    next = pc.wrapping_add(imm);
                }
            }
            Kind::Lb | Kind::Lh | Kind::Lw | Kind::Ld | Kind::Lbu | Kind::Lhu | Kind::Lwu => {
                self.x[rd] = self.load_op(i.kind, rs1.wrapping_add(imm))?
            }
            Kind::Sb | Kind::Sh | Kind::Sw | Kind::Sd => {
                self.store_op(i.kind, rs1.wrapping_add(imm), rs2)?
            }
            Kind::Addi
            | Kind::Slti
            | Kind::Sltiu
            | Kind::Xori
            | Kind::Ori
            | Kind::Andi
            | Kind::Slli
            | Kind::Srli
            | Kind::Srai
            | Kind::Addiw
            | Kind::Slliw
            | Kind::Srliw
            | Kind::Sraiw => self.x[rd] = int_op(i.kind, rs1, imm),
            Kind::Add
            | Kind::Sub
            | Kind::Sll
            | Kind::Slt
            | Kind::Sltu
            | Kind::Xor
            | Kind::Srl
            | Kind::Sra
            | Kind::Or
            | Kind::And
            | Kind::Addw
            | Kind::Subw
            | Kind::Sllw
            | Kind::Srlw
            | Kind::Sraw
            | Kind::Mul
            | Kind::Mulh
            | Kind::Mulhsu
            | Kind::Mulhu
            | Kind::Div
            | Kind::Divu
            | Kind::Rem
            | Kind::Remu
            | Kind::Mulw
            | Kind::Divw
            | Kind::Divuw
            | Kind::Remw
            | Kind::Remuw => self.x[rd] = int_op(i.kind, rs1, rs2),
            Kind::Fence => {}
            Kind::FenceI => self.code_changed(),
            Kind::LrW | Kind::ScW | Kind::AmoW | Kind::LrD | Kind::ScD | Kind::AmoD => {
                self.x[rd] = self.atomic(i, rs1, rs2)?
            }
            Kind::Flw | Kind::Fld | Kind::Fsw | Kind::Fsd | Kind::Fp => {
                self.fp_exec(i, raw, rs1)?
            }
            Kind::Ecall
            | Kind::Ebreak
            | Kind::Sret
            | Kind::Wfi
            | Kind::SfenceVma
            | Kind::Csrrw
            | Kind::Csrrs
            | Kind::Csrrc
            | Kind::Csrrwi
            | Kind::Csrrsi
            | Kind::Csrrci => next = self.system(i, pc, raw, rs1, next)?,
            Kind::Illegal => return Err(Trap::illegal(raw)),
        }
        self.x[0] = 0;
        self.pc = next;
        Ok(())
    }

    // ---- system instructions, CSRs, traps --------------------------------------------

    #[inline(never)]
    fn system(&mut self, i: Insn, pc: u64, raw: u32, rs1: u64, next: u64) -> Result<u64, Trap> {
        let user = self.prv == Privilege::User;
        match i.kind {
            Kind::Ecall if user => Err(Trap {
                cause: cause::ECALL_U,
                tval: 0,
            }),
            Kind::Ecall => {
                self.sbi_call();
                self.break_batch = true;
                Ok(next)
            }
            Kind::Ebreak => Err(Trap {
                cause: cause::BREAKPOINT,
                tval: pc,
            }),
            Kind::Sret | Kind::Wfi | Kind::SfenceVma if user => Err(Trap::illegal(raw)),
            Kind::Sret => {
                let spp = self.sstatus & sstatus::SPP != 0;
                let spie = self.sstatus & sstatus::SPIE != 0;
                self.sstatus &= !(sstatus::SPP | sstatus::SIE);
                self.sstatus |= sstatus::SPIE;
                if spie {
                    self.sstatus |= sstatus::SIE;
                }
                self.reservation = None;
                self.set_priv(if spp {
                    Privilege::Supervisor
                } else {
                    Privilege::User
                });
                self.break_batch = true;
                Ok(self.sepc)
            }
            Kind::Wfi => {
                self.wfi = true;
                self.break_batch = true;
                Ok(next)
            }
            Kind::SfenceVma => {
                self.flush_tlb();
                Ok(next)
            }
            _ => {
                self.csr_insn(i, raw, rs1)?;
                Ok(next)
            }
        }
    }

    /// The six Zicsr instructions (Unprivileged spec §9.1), with the privilege and
    /// read-only checks of Privileged spec §2.1.
    fn csr_insn(&mut self, i: Insn, raw: u32, rs1: u64) -> Result<(), Trap> {
        let csr = (i.imm & 0xfff) as u16;
        let illegal = Trap::illegal(raw);
        if (csr >> 8) & 3 > self.prv as u16 {
            return Err(illegal);
        }
        let uimm = u64::from(i.rs1);
        // (source value, how it combines with the old value, whether a write happens)
        let (src, op, writes) = match i.kind {
            Kind::Csrrw => (rs1, CsrOp::Write, true),
            Kind::Csrrwi => (uimm, CsrOp::Write, true),
            Kind::Csrrs => (rs1, CsrOp::Set, i.rs1 != 0),
            Kind::Csrrsi => (uimm, CsrOp::Set, i.rs1 != 0),
            Kind::Csrrc => (rs1, CsrOp::Clear, i.rs1 != 0),
            _ => (uimm, CsrOp::Clear, i.rs1 != 0),
        };
        // CSRRW(I) with rd = x0 does not read the CSR (and has no read side effects).
        let reads = !(op == CsrOp::Write && i.rd == 0);
        if writes && csr >> 10 == 3 {
            return Err(illegal);
        }
        let old = if reads {
            self.csr_read(csr).ok_or(illegal)?
        } else {
            0
        };
        if writes {
            let new = match op {
                CsrOp::Write => src,
                CsrOp::Set => old | src,
                CsrOp::Clear => old & !src,
            };
            if !self.csr_write(csr, new) {
                return Err(illegal);
            }
        }
        if reads {
            self.x[i.rd as usize & 31] = old;
        }
        Ok(())
    }

    /// Reads a CSR; `None` when it does not exist or U-mode may not read it.
    pub(crate) fn csr_read(&mut self, csr: u16) -> Option<u64> {
        Some(match csr {
            csr::SSTATUS => {
                let dirty = self.sstatus & sstatus::FS == sstatus::FS;
                self.sstatus | sstatus::UXL64 | if dirty { sstatus::SD } else { 0 }
            }
            fpu::csr::FFLAGS..=fpu::csr::FCSR => return self.fp_csr_read(csr),
            csr::SIE => self.sie,
            csr::STVEC => self.stvec,
            csr::SCOUNTEREN => self.scounteren,
            csr::SENVCFG => 0,
            csr::SSCRATCH => self.sscratch,
            csr::SEPC => self.sepc,
            csr::SCAUSE => self.scause,
            csr::STVAL => self.stval,
            csr::SIP => {
                self.refresh_timer();
                self.sip
            }
            csr::SATP => self.satp,
            csr::CYCLE..=csr::HPMCOUNTER31 => {
                let n = csr - csr::CYCLE;
                if self.prv == Privilege::User && (self.scounteren >> n) & 1 == 0 {
                    return None;
                }
                match csr {
                    csr::CYCLE | csr::INSTRET => self.instret,
                    csr::TIME => self.time(),
                    _ => 0,
                }
            }
            _ => return None,
        })
    }

    /// Writes a CSR (after the read-only and privilege checks); `false` when it does not exist.
    pub(crate) fn csr_write(&mut self, csr: u16, v: u64) -> bool {
        match csr {
            csr::SSTATUS => {
                self.sstatus = v & sstatus::WRITABLE;
                self.update_perms();
                self.break_batch = true;
            }
            csr::SIE => {
                self.sie = v & SIE_WRITABLE;
                self.break_batch = true;
            }
            csr::STVEC => {
                // MODE is WARL: the reserved modes 2 and 3 become Direct.
                self.stvec = if v & 3 >= 2 { v & !3 } else { v };
            }
            csr::SCOUNTEREN => self.scounteren = v & 0xffff_ffff,
            csr::SENVCFG => {}
            fpu::csr::FFLAGS..=fpu::csr::FCSR => return self.fp_csr_write(csr, v),
            csr::SSCRATCH => self.sscratch = v,
            // IALIGN = 16: only bit 0 is always zero.
            csr::SEPC => self.sepc = v & !1,
            csr::SCAUSE => self.scause = v,
            csr::STVAL => self.stval = v,
            csr::SIP => {
                self.sip = (self.sip & !SSIP) | (v & SSIP);
                self.break_batch = true;
            }
            csr::SATP => {
                match v >> 60 {
                    0 => self.satp = 0,
                    SATP_MODE_SV39 => self.satp = v & ((0xf << 60) | SATP_PPN_MASK),
                    // Unsupported modes: the write has no effect (§4.1.11).
                    _ => return true,
                }
                self.mmu_on = self.satp >> 60 == SATP_MODE_SV39;
                self.flush_tlb();
            }
            _ => return false,
        }
        true
    }

    fn refresh_timer(&mut self) {
        if self.time() >= self.timecmp {
            self.sip |= STIP;
        } else {
            self.sip &= !STIP;
        }
    }

    /// Enters the S-mode trap handler (Privileged spec §4.1.1, §4.1.2).
    pub(crate) fn take_trap(&mut self, cause: u64, tval: u64, interrupt: bool) {
        if let Some(t) = self.trace.as_mut() {
            let _ = writeln!(
                t,
                "trap: async:{} cause:{cause:#x} epc:{:#018x} tval:{tval:#x} priv:{:?}",
                interrupt as u8, self.pc, self.prv
            );
        }
        if !interrupt && self.trap_loop.observe(cause, self.pc, tval, self.instret) {
            log::error!(
                "guest stuck: {TRAP_LOOP_LIMIT} traps in a row with cause {cause:#x} at pc \
                 {:#x} (tval {tval:#x}) and no instruction completed in between; stopping",
                self.pc
            );
            self.exit = Some(ExitReason::TrapLoop {
                cause,
                pc: self.pc,
                tval,
            });
            self.break_batch = true;
        }
        self.sepc = self.pc;
        self.scause = cause | (u64::from(interrupt) << 63);
        self.stval = tval;
        let sie = self.sstatus & sstatus::SIE != 0;
        self.sstatus &= !(sstatus::SIE | sstatus::SPIE | sstatus::SPP);
        if sie {
            self.sstatus |= sstatus::SPIE;
        }
        if self.prv == Privilege::Supervisor {
            self.sstatus |= sstatus::SPP;
        }
        let base = self.stvec & !3;
        self.pc = if interrupt && self.stvec & 3 == 1 {
            base.wrapping_add(4 * cause)
        } else {
            base
        };
        self.reservation = None;
        self.set_priv(Privilege::Supervisor);
    }

    /// The highest-priority interrupt that is pending, enabled and not masked (Privileged
    /// spec §4.1.3: SEI > SSI > STI; taken in U-mode always, in S-mode only with SIE).
    pub(crate) fn pending_interrupt(&self) -> Option<u64> {
        let pending = self.sip & self.sie;
        if pending == 0 {
            return None;
        }
        if self.prv == Privilege::Supervisor && self.sstatus & sstatus::SIE == 0 {
            return None;
        }
        [cause::IRQ_S_EXT, cause::IRQ_S_SOFT, cause::IRQ_S_TIMER]
            .into_iter()
            .find(|c| pending & (1 << c) != 0)
    }

    /// Refreshes SEIP and STIP and takes an interrupt if one is due. Called between batches.
    pub(crate) fn poll_interrupts(&mut self) {
        if self.irq.take_changed() {
            if self.bus.plic.seip() {
                self.sip |= SEIP;
            } else {
                self.sip &= !SEIP;
            }
        }
        self.refresh_timer();
        if self.wfi && self.sip & self.sie != 0 {
            // WFI resumes on a locally enabled pending interrupt, even with SIE clear.
            self.wfi = false;
        }
        if let Some(c) = self.pending_interrupt() {
            self.wfi = false;
            self.take_trap(c, 0, true);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum CsrOp {
    Write,
    Set,
    Clear,
}

/// The result of an integer register-register or register-immediate instruction (RV64I,
/// M) on operands `a` (rs1) and `b` (rs2, or the sign-extended immediate / shift amount).
#[inline(always)]
fn int_op(kind: Kind, a: u64, b: u64) -> u64 {
    let (a32, b32) = (a as u32, b as u32);
    match kind {
        Kind::Add | Kind::Addi => a.wrapping_add(b),
        Kind::Sub => a.wrapping_sub(b),
        Kind::Sll | Kind::Slli => a << (b & 63),
        Kind::Slt | Kind::Slti => ((a as i64) < (b as i64)) as u64,
        Kind::Sltu | Kind::Sltiu => (a < b) as u64,
        Kind::Xor | Kind::Xori => a ^ b,
        Kind::Srl | Kind::Srli => a >> (b & 63),
        Kind::Sra | Kind::Srai => ((a as i64) >> (b & 63)) as u64,
        Kind::Or | Kind::Ori => a | b,
        Kind::And | Kind::Andi => a & b,
        Kind::Addw | Kind::Addiw => sext32(a.wrapping_add(b)),
        Kind::Subw => sext32(a.wrapping_sub(b)),
        Kind::Sllw | Kind::Slliw => sext32(u64::from(a32 << (b & 31))),
        Kind::Srlw | Kind::Srliw => sext32(u64::from(a32 >> (b & 31))),
        Kind::Sraw | Kind::Sraiw => ((a32 as i32) >> (b & 31)) as i64 as u64,
        Kind::Mul => a.wrapping_mul(b),
        Kind::Mulh => ((i128::from(a as i64) * i128::from(b as i64)) >> 64) as u64,
        // |a| <= 2^63 and b < 2^64: the product fits in i128.
        Kind::Mulhsu => ((i128::from(a as i64) * i128::from(b)) >> 64) as u64,
        Kind::Mulhu => ((u128::from(a) * u128::from(b)) >> 64) as u64,
        Kind::Div if b == 0 => u64::MAX,
        Kind::Div => (a as i64).wrapping_div(b as i64) as u64,
        Kind::Divu => a.checked_div(b).unwrap_or(u64::MAX),
        Kind::Rem if b == 0 => a,
        Kind::Rem => (a as i64).wrapping_rem(b as i64) as u64,
        Kind::Remu => a.checked_rem(b).unwrap_or(a),
        Kind::Mulw => sext32(a.wrapping_mul(b)),
        Kind::Divw if b32 == 0 => u64::MAX,
        Kind::Divw => (a32 as i32).wrapping_div(b32 as i32) as i64 as u64,
        Kind::Divuw => a32
            .checked_div(b32)
            .map_or(u64::MAX, |q| sext32(u64::from(q))),
        Kind::Remw if b32 == 0 => a32 as i32 as i64 as u64,
        Kind::Remw => (a32 as i32).wrapping_rem(b32 as i32) as i64 as u64,
        Kind::Remuw => sext32(u64::from(a32.checked_rem(b32).unwrap_or(a32))),
        // Not an integer operation: callers only pass the kinds above.
        _ => 0,
    }
}

/// Bytes accessed by an integer load or store of `kind` (LB..LWU, SB..SD).
pub(crate) const fn mem_size(kind: Kind) -> usize {
    match kind {
        Kind::Lb | Kind::Lbu | Kind::Sb => 1,
        Kind::Lh | Kind::Lhu | Kind::Sh => 2,
        Kind::Lw | Kind::Lwu | Kind::Sw => 4,
        _ => 8,
    }
}

/// The value an integer load of `kind` puts in rd, from the `mem_size(kind)` bytes read.
#[inline(always)]
fn load_extend(kind: Kind, v: u64) -> u64 {
    match kind {
        Kind::Lb => v as i8 as i64 as u64,
        Kind::Lh => v as i16 as i64 as u64,
        Kind::Lw => sext32(v),
        _ => v,
    }
}

/// Whether a conditional branch of `kind` with rs1 = `a`, rs2 = `b` is taken.
#[inline(always)]
fn branch_taken(kind: Kind, a: u64, b: u64) -> bool {
    match kind {
        Kind::Beq => a == b,
        Kind::Bne => a != b,
        Kind::Blt => (a as i64) < (b as i64),
        Kind::Bge => (a as i64) >= (b as i64),
        Kind::Bltu => a < b,
        _ => a >= b,
    }
}

/// The AMO arithmetic on `old` (memory) and `src` (rs2), 32- or 64-bit.
fn amo(op: i32, old: u64, src: u64, wide: bool) -> u64 {
    let op = AmoOp::from_funct5(op as u32).unwrap_or(AmoOp::Swap);
    if wide {
        match op {
            AmoOp::Swap => src,
            AmoOp::Add => old.wrapping_add(src),
            AmoOp::Xor => old ^ src,
            AmoOp::And => old & src,
            AmoOp::Or => old | src,
            AmoOp::Min => (old as i64).min(src as i64) as u64,
            AmoOp::Max => (old as i64).max(src as i64) as u64,
            AmoOp::Minu => old.min(src),
            AmoOp::Maxu => old.max(src),
        }
    } else {
        let (o, s) = (old as u32, src as u32);
        u64::from(match op {
            AmoOp::Swap => s,
            AmoOp::Add => o.wrapping_add(s),
            AmoOp::Xor => o ^ s,
            AmoOp::And => o & s,
            AmoOp::Or => o | s,
            AmoOp::Min => (o as i32).min(s as i32) as u32,
            AmoOp::Max => (o as i32).max(s as i32) as u32,
            AmoOp::Minu => o.min(s),
            AmoOp::Maxu => o.max(s),
        })
    }
}
