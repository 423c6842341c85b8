//! The hart's fast path: decoded basic blocks with a pre-resolved handler per instruction.
//!
//! A block is the run of instructions from one physical address to the first jump or
//! instruction without a fast handler (CSR, system, atomic, FP, illegal: they run through
//! [`Hart::exec`] and end the block), at most [`BLOCK_MAX`] instructions, never past the end
//! of its page (a 32-bit instruction straddling two pages goes through [`Hart::step`]). A
//! conditional branch does not end a block: taken, it leaves it. Blocks live in a
//! direct-mapped cache keyed by the RAM offset of their first instruction: the key is
//! physical, so address-space switches need no flush, and the page is translated (with its
//! execute-permission check) when a block is entered.
//!
//! Exactness: every instruction is compared with the memory it was decoded from just before
//! it runs, so code written by anyone (the hart's own stores, even inside the running block,
//! device DMA, the loader) is never run stale; a mismatch drops the block and the next lookup
//! decodes it again. Instructions are counted one by one (`instret`, the batch budget), the
//! pc is exact at every trap, and interrupts are still taken between batches only.

use super::{Access, Hart, Trap};
use crate::decode::{decode, Kind};

/// Most instructions in one block.
const BLOCK_MAX: usize = 16;
/// Number of blocks in the cache (power of two).
const BLOCKS: usize = 8192;
/// A handler's return value for "the instruction trapped" (the trap is in `Hart::trap`); pcs
/// are always even, so it cannot be a next pc.
const TRAPPED: u64 = 1;
/// Tag of an empty cache entry (no RAM offset is this large).
const NO_BLOCK: usize = usize::MAX;

/// Runs one decoded instruction at `pc`; returns the next pc or [`TRAPPED`].
type Handler = fn(&mut Hart, &Op, u64) -> u64;

/// One decoded instruction of a block: 16 bytes.
#[derive(Clone, Copy)]
pub(super) struct Op {
    run: Handler,
    /// The immediate; for [`generic`], the instruction bits.
    imm: i32,
    rd: u8,
    rs1: u8,
    rs2: u8,
    /// 2 or 4 bytes.
    len: u8,
}

impl Op {
    #[inline(always)]
    fn rs1(&self, h: &Hart) -> u64 {
        h.x[self.rs1 as usize & 31]
    }

    #[inline(always)]
    fn rs2(&self, h: &Hart) -> u64 {
        h.x[self.rs2 as usize & 31]
    }

    #[inline(always)]
    fn imm(&self) -> u64 {
        self.imm as i64 as u64
    }

    #[inline(always)]
    fn set_rd(&self, h: &mut Hart, v: u64) {
        h.x[self.rd as usize & 31] = v;
    }

    #[inline(always)]
    fn next(&self, pc: u64) -> u64 {
        pc.wrapping_add(u64::from(self.len))
    }
}

#[repr(C)]
pub(super) struct Block {
    /// RAM offset of the first instruction, or [`NO_BLOCK`].
    tag: usize,
    len: usize,
    /// The instruction bits each op was decoded from (16 significant bits when compressed).
    raws: [u32; BLOCK_MAX],
    ops: [Op; BLOCK_MAX],
}

/// The block cache.
pub(super) struct Blocks(Box<[Block]>);

impl Blocks {
    pub(super) fn new() -> Self {
        let op = Op {
            run: generic,
            imm: 0,
            rd: 0,
            rs1: 0,
            rs2: 0,
            len: 4,
        };
        let empty = || Block {
            tag: NO_BLOCK,
            len: 0,
            raws: [0; BLOCK_MAX],
            ops: [op; BLOCK_MAX],
        };
        Blocks((0..BLOCKS).map(|_| empty()).collect())
    }

    fn slot(off: usize) -> usize {
        ((off >> 1) ^ (off >> 13)) & (BLOCKS - 1)
    }
}

impl Hart {
    /// Runs at most `budget` instructions through the block cache; stops early when
    /// `break_batch` is set. Returns the number of instructions attempted (including ones
    /// that trapped), as [`Hart::run_batch`].
    pub(super) fn run_blocks(&mut self, budget: u64) -> u64 {
        // The cache leaves `self` (for an empty one: no allocation) while handlers borrow
        // `self` mutably.
        let mut blocks = std::mem::replace(&mut self.blocks, Blocks(Box::default()));
        let mut n = 0;
        while n < budget {
            let pc = self.pc;
            let in_page = (pc & 0xfff) as usize;
            // (An odd pc cannot happen; `fetch_page` would raise the misaligned fetch.)
            if pc >> 12 != self.fetch_vpn || pc & 1 != 0 {
                if let Err(t) = self.fetch_page(pc) {
                    n += 1;
                    self.take_trap(t.cause, t.tval, false);
                    if self.break_batch {
                        break;
                    }
                    continue;
                }
            }
            let off = self.fetch_off + in_page;
            let block = &mut blocks.0[Blocks::slot(off)];
            // SAFETY: `fetch_off` is the RAM page `fetch_page` checked for `fetch_vpn`, the
            // page of `pc`, and `pc` is 2-aligned (both checked above).
            if block.tag != off && !unsafe { self.build(block, off, in_page) } {
                // Nothing to cache here (a 32-bit instruction straddling two pages).
                n += 1;
                if let Err(t) = self.step::<false>() {
                    self.take_trap(t.cause, t.tval, false);
                }
                if self.break_batch {
                    break;
                }
                continue;
            }
            // `budget - n` >= 1 here.
            let limit = block.len.min(BLOCK_MAX).min((budget - n) as usize);
            let mut pc = pc;
            let mut off = off;
            let mut k = 0;
            while k < limit {
                let op = &block.ops[k];
                // SAFETY: `off` is where op `k` was decoded (2-aligned, in the page that
                // `fetch_page` checked at block entry), and `build` kept `op.len` bytes of the
                // page from there.
                if unsafe { self.fetch_raw(off, u32::from(op.len)) } != block.raws[k] {
                    // Rewritten since decoded: decode again from this instruction.
                    block.tag = NO_BLOCK;
                    break;
                }
                k += 1;
                let next = (op.run)(self, op, pc);
                if next == TRAPPED {
                    let t = self.trap;
                    self.pc = pc;
                    self.take_trap(t.cause, t.tval, false);
                    pc = self.pc;
                    break;
                }
                self.x[0] = 0;
                self.instret = self.instret.wrapping_add(1);
                let fall = op.next(pc);
                pc = next;
                if next != fall {
                    // A taken branch: the rest of the block is not on this path.
                    break;
                }
                off += usize::from(op.len);
            }
            n += k as u64;
            self.pc = pc;
            // Set by MMIO accesses, CSR writes, SBI calls...: the rest of a block may run
            // before pending interrupts are looked at, as after any instruction.
            if self.break_batch {
                break;
            }
        }
        self.blocks = blocks;
        n
    }

    /// The instruction bits at RAM offset `off`: 16 when `len` is 2, else 32.
    ///
    /// # Safety
    ///
    /// `off` is 2-aligned and lies in a page that [`Hart::fetch_page`] found to be RAM, with
    /// at least `len` bytes of that page left from `off`.
    #[inline(always)]
    unsafe fn fetch_raw(&self, off: usize, len: u32) -> u32 {
        // SAFETY: (all three loads) in bounds by the caller's guarantee; 2-aligned, and
        // 4-aligned where a 4-byte load is used.
        unsafe {
            if len == 2 {
                self.bus.ram.load::<2>(off) as u32
            } else if off & 3 == 0 {
                self.bus.ram.load::<4>(off) as u32
            } else {
                self.bus.ram.load::<2>(off) as u32 | (self.bus.ram.load::<2>(off + 2) as u32) << 16
            }
        }
    }

    /// Decodes the block starting at RAM offset `off` (`in_page` into the fetch page) into
    /// `block`. Returns false when not even the first instruction fits in the page.
    ///
    /// # Safety
    ///
    /// `off` is 2-aligned and `in_page` bytes into a page that [`Hart::fetch_page`] found to
    /// be RAM.
    #[cold]
    unsafe fn build(&self, block: &mut Block, off: usize, in_page: usize) -> bool {
        let page_left = 0x1000 - in_page;
        let mut at = 0;
        let mut len = 0;
        while len < BLOCK_MAX && at + 2 <= page_left {
            // SAFETY: `off + at` is in the fetch page (RAM, checked when cached) with at
            // least 2 bytes left, and 2-aligned.
            let lo = unsafe { self.bus.ram.load::<2>(off + at) } as u32;
            let size = if lo & 3 == 3 { 4 } else { 2 };
            if at + size > page_left {
                break;
            }
            // SAFETY: checked just above: `size` bytes of the page left from `off + at`.
            let raw = unsafe { self.fetch_raw(off + at, size as u32) };
            let insn = decode(raw);
            // The interpreter re-decodes what has no fast handler, from the bits in `imm`.
            let (run, imm, ends) = match handler(insn.kind) {
                Some((run, ends)) => (run, insn.imm, ends),
                None => (generic as Handler, raw as i32, true),
            };
            block.raws[len] = raw;
            block.ops[len] = Op {
                run,
                imm,
                rd: insn.rd,
                rs1: insn.rs1,
                rs2: insn.rs2,
                len: size as u8,
            };
            len += 1;
            at += size;
            if ends {
                break;
            }
        }
        block.len = len;
        block.tag = if len > 0 { off } else { NO_BLOCK };
        len > 0
    }
}

/// The fast handler of an instruction kind, and whether it ends a block (it never falls
/// through); `None`: the interpreter runs it, ending the block.
fn handler(kind: Kind) -> Option<(Handler, bool)> {
    // One function per kind, with the kind a constant in it.
    macro_rules! int {
        ($k:ident, $src:ident) => {{
            fn run(h: &mut Hart, op: &Op, pc: u64) -> u64 {
                let v = super::int_op(Kind::$k, op.rs1(h), int!(@$src h, op));
                op.set_rd(h, v);
                op.next(pc)
            }
            (run as Handler, false)
        }};
        (@rs2 $h:ident, $op:ident) => {
            $op.rs2($h)
        };
        (@imm $h:ident, $op:ident) => {
            $op.imm()
        };
    }
    // A conditional branch does not end its block: the block goes on along the not-taken
    // path, and a taken branch leaves it (its target differs from the fall-through pc).
    macro_rules! branch {
        ($k:ident) => {{
            fn run(h: &mut Hart, op: &Op, pc: u64) -> u64 {
                if super::branch_taken(Kind::$k, op.rs1(h), op.rs2(h)) {
                    pc.wrapping_add(op.imm())
                } else {
                    op.next(pc)
                }
            }
            (run as Handler, false)
        }};
    }
    // Loads and stores: the common case (aligned, TLB hit, RAM) inline, anything else
    // through the full path in a cold function.
    macro_rules! load {
        ($k:ident) => {{
            fn run(h: &mut Hart, op: &Op, pc: u64) -> u64 {
                const N: usize = super::mem_size(Kind::$k);
                let va = op.rs1(h).wrapping_add(op.imm());
                if let Some(off) = h.ram_fast::<N>(va, Access::Read) {
                    // SAFETY: `ram_fast` proved `off + N` in RAM and `off` N-aligned.
                    let v = unsafe { h.bus.ram.load::<N>(off) };
                    op.set_rd(h, super::load_extend(Kind::$k, v));
                    return op.next(pc);
                }
                load_slow(h, op, pc, Kind::$k)
            }
            (run as Handler, false)
        }};
    }
    macro_rules! store {
        ($k:ident) => {{
            fn run(h: &mut Hart, op: &Op, pc: u64) -> u64 {
                const N: usize = super::mem_size(Kind::$k);
                let va = op.rs1(h).wrapping_add(op.imm());
                if let Some(off) = h.ram_fast::<N>(va, Access::Write) {
                    // SAFETY: `ram_fast` proved `off + N` in RAM and `off` N-aligned.
                    unsafe { h.bus.ram.store::<N>(off, op.rs2(h)) };
                    return op.next(pc);
                }
                store_slow(h, op, pc, Kind::$k)
            }
            (run as Handler, false)
        }};
    }
    Some(match kind {
        Kind::Add => int!(Add, rs2),
        Kind::Sub => int!(Sub, rs2),
        Kind::Sll => int!(Sll, rs2),
        Kind::Slt => int!(Slt, rs2),
        Kind::Sltu => int!(Sltu, rs2),
        Kind::Xor => int!(Xor, rs2),
        Kind::Srl => int!(Srl, rs2),
        Kind::Sra => int!(Sra, rs2),
        Kind::Or => int!(Or, rs2),
        Kind::And => int!(And, rs2),
        Kind::Addw => int!(Addw, rs2),
        Kind::Subw => int!(Subw, rs2),
        Kind::Sllw => int!(Sllw, rs2),
        Kind::Srlw => int!(Srlw, rs2),
        Kind::Sraw => int!(Sraw, rs2),
        Kind::Mul => int!(Mul, rs2),
        Kind::Mulh => int!(Mulh, rs2),
        Kind::Mulhsu => int!(Mulhsu, rs2),
        Kind::Mulhu => int!(Mulhu, rs2),
        Kind::Div => int!(Div, rs2),
        Kind::Divu => int!(Divu, rs2),
        Kind::Rem => int!(Rem, rs2),
        Kind::Remu => int!(Remu, rs2),
        Kind::Mulw => int!(Mulw, rs2),
        Kind::Divw => int!(Divw, rs2),
        Kind::Divuw => int!(Divuw, rs2),
        Kind::Remw => int!(Remw, rs2),
        Kind::Remuw => int!(Remuw, rs2),
        Kind::Addi => int!(Addi, imm),
        Kind::Slti => int!(Slti, imm),
        Kind::Sltiu => int!(Sltiu, imm),
        Kind::Xori => int!(Xori, imm),
        Kind::Ori => int!(Ori, imm),
        Kind::Andi => int!(Andi, imm),
        Kind::Slli => int!(Slli, imm),
        Kind::Srli => int!(Srli, imm),
        Kind::Srai => int!(Srai, imm),
        Kind::Addiw => int!(Addiw, imm),
        Kind::Slliw => int!(Slliw, imm),
        Kind::Srliw => int!(Srliw, imm),
        Kind::Sraiw => int!(Sraiw, imm),
        Kind::Lui => (lui as Handler, false),
        Kind::Auipc => (auipc, false),
        Kind::Jal => (jal, true),
        Kind::Jalr => (jalr, true),
        Kind::Beq => branch!(Beq),
        Kind::Bne => branch!(Bne),
        Kind::Blt => branch!(Blt),
        Kind::Bge => branch!(Bge),
        Kind::Bltu => branch!(Bltu),
        Kind::Bgeu => branch!(Bgeu),
        Kind::Lb => load!(Lb),
        Kind::Lh => load!(Lh),
        Kind::Lw => load!(Lw),
        Kind::Ld => load!(Ld),
        Kind::Lbu => load!(Lbu),
        Kind::Lhu => load!(Lhu),
        Kind::Lwu => load!(Lwu),
        Kind::Sb => store!(Sb),
        Kind::Sh => store!(Sh),
        Kind::Sw => store!(Sw),
        Kind::Sd => store!(Sd),
        // Fences have nothing to do on this in-order hart whose instruction fetch already
        // sees every store.
        Kind::Fence | Kind::FenceI => (nop, false),
        _ => return None,
    })
}

#[cold]
#[inline(never)]
fn load_slow(h: &mut Hart, op: &Op, pc: u64, kind: Kind) -> u64 {
    match h.load_op(kind, op.rs1(h).wrapping_add(op.imm())) {
        Ok(v) => {
            op.set_rd(h, v);
            op.next(pc)
        }
        Err(t) => trapped(h, t),
    }
}

#[cold]
#[inline(never)]
fn store_slow(h: &mut Hart, op: &Op, pc: u64, kind: Kind) -> u64 {
    match h.store_op(kind, op.rs1(h).wrapping_add(op.imm()), op.rs2(h)) {
        Ok(()) => op.next(pc),
        Err(t) => trapped(h, t),
    }
}

#[cold]
fn trapped(h: &mut Hart, t: Trap) -> u64 {
    h.trap = t;
    TRAPPED
}

fn nop(_: &mut Hart, op: &Op, pc: u64) -> u64 {
    op.next(pc)
}

fn lui(h: &mut Hart, op: &Op, pc: u64) -> u64 {
    op.set_rd(h, op.imm());
    op.next(pc)
}

fn auipc(h: &mut Hart, op: &Op, pc: u64) -> u64 {
    op.set_rd(h, pc.wrapping_add(op.imm()));
    op.next(pc)
}

fn jal(h: &mut Hart, op: &Op, pc: u64) -> u64 {
    op.set_rd(h, op.next(pc));
    pc.wrapping_add(op.imm())
}

fn jalr(h: &mut Hart, op: &Op, pc: u64) -> u64 {
    // The target is computed before rd is written (rd may be rs1).
    let target = op.rs1(h).wrapping_add(op.imm()) & !1;
    op.set_rd(h, op.next(pc));
    target
}

/// An instruction without a fast handler: decoded again from its bits (in `imm`) and run by
/// the interpreter's `exec`, which sets the pc.
fn generic(h: &mut Hart, op: &Op, pc: u64) -> u64 {
    let raw = op.imm as u32;
    h.pc = pc;
    match h.exec(decode(raw), pc, raw) {
        Ok(()) => h.pc,
        Err(t) => trapped(h, t),
    }
}
