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
//! Code changes (Unprivileged spec, Zifencei): a block keeps the instruction bits it was
//! decoded from and the code epoch it was last checked in. The epoch moves on when the
//! hart stores to a page blocks were decoded from (a byte per RAM page says which), at
//! FENCE.I and SBI remote fence.i, and when a run starts; a block from an older epoch is
//! compared with memory before it runs (and decoded again if it differs). So the hart's own
//! stores are seen at once, even inside the running block (the store ends it), as the
//! interpreter sees them; code written by devices (DMA) is seen after the FENCE.I the spec
//! asks the guest for, as on hardware with an instruction cache. Instructions are counted
//! one by one (`instret`, the batch budget), the pc is exact at every trap, and interrupts
//! are still taken between batches only.

use super::{Access, Hart, Trap};
use crate::decode::{decode, Kind};

/// Most instructions in one block.
const BLOCK_MAX: usize = 16;
/// Number of blocks in the cache (power of two).
const BLOCKS: usize = 16384;
/// A handler's return value for "the instruction trapped" (the trap is in `Hart::trap`); pcs
/// are always even, so it cannot be a next pc.
const TRAPPED: u64 = 1;
/// A handler's return value for "the instruction completed but may have rewritten code":
/// the next pc is in `Hart::pc`, and the rest of the block may be stale.
const CODE_WRITTEN: u64 = 3;
/// Tag of an empty cache entry (no RAM offset is this large).
const NO_BLOCK: usize = usize::MAX;

/// Runs op `k` of a block's ops at `pc` (a step function `fn(&mut Hart, &Op, pc) -> u64`
/// returning the next pc, [`TRAPPED`] or [`CODE_WRITTEN`], wrapped by `thread!`), then, when it
/// fell through and `left` (the ops allowed from `k` on, at least 1) is not used up, the
/// next op straight from this one (threaded dispatch: each handler has its own indirect
/// branch to the next, which the host CPU predicts far better than one shared call site).
type Handler = fn(&mut Hart, &[Op; BLOCK_MAX], usize, u64, usize) -> Exit;

/// Where a run of a block's ops stopped: `next` as the step function returned it for the last op
/// run (on [`TRAPPED`], `Hart::pc` holds that op's pc), and how many of the allowed ops
/// were not run.
pub(super) struct Exit {
    next: u64,
    left: usize,
}

/// Wraps a step function into a [`Handler`].
macro_rules! thread {
    ($step:expr) => {{
        fn threaded(h: &mut Hart, ops: &[Op; BLOCK_MAX], k: usize, pc: u64, left: usize) -> Exit {
            let next = $step(h, &ops[k & (BLOCK_MAX - 1)], pc);
            chain(h, ops, k, pc, next, left)
        }
        threaded as Handler
    }};
}

/// After op `k` at `pc` returned `next`: runs op `k + 1` when op `k` fell through (pcs are
/// even, so [`TRAPPED`] and [`CODE_WRITTEN`] never do) and ops are left, else stops.
#[inline(always)]
fn chain(h: &mut Hart, ops: &[Op; BLOCK_MAX], k: usize, pc: u64, next: u64, left: usize) -> Exit {
    if left > 1 && next == ops[k & (BLOCK_MAX - 1)].next(pc) {
        let k = k + 1;
        let op = &ops[k & (BLOCK_MAX - 1)];
        return (op.run)(h, ops, k, next, left - 1);
    }
    if next == TRAPPED {
        h.pc = pc;
    }
    Exit {
        next,
        left: left - 1,
    }
}

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
    /// The `Hart::code_epoch` in which the ops were last known to match memory.
    epoch: u64,
    len: u32,
    /// Every op has a fast handler other than FENCE.I: none changes the privilege, the
    /// translation or the code epoch, so a jump back to the start may run the block again
    /// at once (the block's page and epoch were checked when it was entered).
    loops: bool,
    /// Cache slots of the blocks likely to run next (the fall-through, the target of the
    /// last direct jump or branch): prefetched while this one runs.
    next: [u16; 2],
    ops: [Op; BLOCK_MAX],
    /// The instruction bits each op was decoded from (16 significant bits when compressed);
    /// last, off the hot cache lines: read only when the epoch moved on.
    raws: [u32; BLOCK_MAX],
}

/// The block cache.
pub(super) struct Blocks(Box<[Block]>);

impl Blocks {
    /// No blocks, and no allocation: what `run_blocks` leaves in the hart while it holds
    /// the cache, and a new hart's cache until its first batch.
    pub(super) fn empty() -> Self {
        Blocks(Box::default())
    }

    pub(super) fn new() -> Self {
        let op = Op {
            run: thread!(generic),
            imm: 0,
            rd: 0,
            rs1: 0,
            rs2: 0,
            len: 4,
        };
        let empty = || Block {
            tag: NO_BLOCK,
            epoch: 0,
            len: 0,
            loops: false,
            next: [0; 2],
            ops: [op; BLOCK_MAX],
            raws: [0; BLOCK_MAX],
        };
        Blocks((0..BLOCKS).map(|_| empty()).collect())
    }

    fn slot(off: usize) -> usize {
        ((off >> 1) ^ (off >> 13)) & (BLOCKS - 1)
    }
}

/// Asks the host CPU to bring the start of the blocks `next` names (slots of `base`) into
/// cache while the current block runs: a hint, with no effect on behaviour.
#[inline(always)]
fn prefetch(base: *const Block, next: [u16; 2]) {
    #[cfg(target_arch = "x86_64")]
    for slot in next {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE is part of the x86_64 baseline, and a prefetch never faults nor
        // reads into the program (any address is fine; slots are in bounds anyway).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(usize::from(slot)).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (base, next);
}

impl Hart {
    /// Runs at most `budget` instructions through the block cache; stops early when
    /// `break_batch` is set. Returns the number of instructions attempted (including ones
    /// that trapped), as [`Hart::run_batch`].
    pub(super) fn run_blocks(&mut self, budget: u64) -> u64 {
        // The cache leaves `self` (for an empty one: no allocation) while handlers borrow
        // `self` mutably.
        let mut blocks = std::mem::replace(&mut self.blocks, Blocks::empty());
        if blocks.0.is_empty() {
            blocks = Blocks::new();
        }
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
            let base = blocks.0.as_ptr();
            let block = &mut blocks.0[Blocks::slot(off)];
            let current = block.tag == off && block.epoch == self.code_epoch;
            // SAFETY: `fetch_off` is the RAM page `fetch_page` checked for `fetch_vpn`, the
            // page of `pc`, and `pc` is 2-aligned (both checked above).
            if !current && !unsafe { self.refresh(block, off, in_page) } {
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
            prefetch(base, block.next);
            let entry = pc;
            let mut pc = pc;
            let mut k;
            // `budget - n` >= 1 here.
            let mut limit = (block.len as usize)
                .min(BLOCK_MAX)
                .min((budget - n) as usize);
            loop {
                // `instret` counts the whole run up front (one update instead of one per
                // instruction); the exit takes back what did not run. `generic`, the only
                // handler that can read it, is a block's last op and corrects for itself.
                self.instret = self.instret.wrapping_add(limit as u64);
                let exit = (block.ops[0].run)(self, &block.ops, 0, pc, limit);
                // Ops attempted (`exit.left < limit`: at least the first one ran).
                k = limit - exit.left;
                if exit.next == TRAPPED {
                    // The trapping instruction (at `self.pc`) did not retire.
                    self.instret = self.instret.wrapping_sub((limit - (k - 1)) as u64);
                    limit = k;
                    let t = self.trap;
                    self.take_trap(t.cause, t.tval, false);
                    pc = self.pc;
                    break;
                }
                if exit.next == CODE_WRITTEN {
                    // Done, but the rest of the block may be stale.
                    pc = self.pc;
                    break;
                }
                pc = exit.next;
                // A loop back to the block's own start runs it again without a lookup when
                // nothing a lookup checks can have changed (see `Block::loops`).
                if pc == entry && block.loops && !self.break_batch && n + (k as u64) < budget {
                    self.instret = self.instret.wrapping_sub((limit - k) as u64);
                    n += k as u64;
                    limit = limit.min((budget - n) as usize);
                    continue;
                }
                break;
            }
            // Take back what did not run (nothing after a trap: settled above).
            self.instret = self.instret.wrapping_sub((limit - k) as u64);
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

    /// Makes `block` the current decoding of the code at RAM offset `off` (`in_page` into
    /// the fetch page): a block of an older epoch that still matches memory is kept, anything
    /// else is decoded again. Returns false when not even the first instruction fits in the
    /// page.
    ///
    /// # Safety
    ///
    /// As [`Hart::build`].
    #[cold]
    unsafe fn refresh(&mut self, block: &mut Block, off: usize, in_page: usize) -> bool {
        // SAFETY: the caller's guarantee.
        if block.tag == off && unsafe { self.matches(block) } {
            block.epoch = self.code_epoch;
            self.mark_code(off);
            return true;
        }
        // SAFETY: the caller's guarantee.
        unsafe { self.build(block, off, in_page) }
    }

    /// Whether memory still holds the instruction bits `block` was decoded from.
    ///
    /// # Safety
    ///
    /// `block.tag` is a RAM offset in a page that [`Hart::fetch_page`] found to be RAM.
    unsafe fn matches(&self, block: &Block) -> bool {
        let mut at = block.tag;
        for (op, &raw) in block.ops.iter().zip(&block.raws).take(block.len as usize) {
            // SAFETY: `build` decoded op by op from `block.tag` within the page, each `len`
            // bytes long, so each `at` is 2-aligned with `op.len` bytes of the page left.
            if unsafe { self.fetch_raw(at, u32::from(op.len)) } != raw {
                return false;
            }
            at += usize::from(op.len);
        }
        true
    }

    fn mark_code(&mut self, off: usize) {
        if let Some(b) = self.code_pages.get_mut(off >> 12) {
            *b = 1;
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
    unsafe fn build(&mut self, block: &mut Block, off: usize, in_page: usize) -> bool {
        let page_left = 0x1000 - in_page;
        let mut at = 0;
        let mut len = 0;
        let mut loops = true;
        let mut target = off;
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
            let insn = self.decode_cached(raw);
            // The interpreter re-decodes what has no fast handler, from the bits in `imm`.
            let (run, imm, ends) = match handler(insn.kind, insn.rd) {
                Some((run, ends)) => {
                    loops &= insn.kind != Kind::FenceI;
                    (run, insn.imm, ends)
                }
                None => {
                    loops = false;
                    (thread!(generic), raw as i32, true)
                }
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
            if matches!(
                insn.kind,
                Kind::Jal | Kind::Beq | Kind::Bne | Kind::Blt | Kind::Bge | Kind::Bltu | Kind::Bgeu
            ) {
                // In this page: the same RAM page (translation is per page).
                let t = (in_page + at) as i64 + i64::from(insn.imm);
                if (0..0x1000).contains(&t) {
                    target = off - in_page + t as usize;
                }
            }
            len += 1;
            at += size;
            if ends {
                break;
            }
        }
        block.len = len as u32;
        block.loops = loops;
        let fall = if at < page_left { off + at } else { off };
        block.next = [Blocks::slot(fall) as u16, Blocks::slot(target) as u16];
        block.epoch = self.code_epoch;
        block.tag = if len > 0 { off } else { NO_BLOCK };
        if len > 0 {
            self.mark_code(off);
        }
        len > 0
    }
}

/// The fast handler of an instruction, and whether it ends a block (it never falls
/// through); `None`: the interpreter runs it, ending the block. No fast handler writes x0
/// (the block loop does not clear it after each instruction): an integer op or LUI/AUIPC
/// with rd = x0 is a no-op (a HINT), jumps have link-less variants, and a load into x0
/// (which still accesses memory) goes to the interpreter.
fn handler(kind: Kind, rd: u8) -> Option<(Handler, bool)> {
    if rd == 0 {
        return match kind {
            Kind::Jal => Some((thread!(jal_x0), true)),
            Kind::Jalr => Some((thread!(jalr_x0), true)),
            Kind::Lb | Kind::Lh | Kind::Lw | Kind::Ld | Kind::Lbu | Kind::Lhu | Kind::Lwu => None,
            Kind::Sb | Kind::Sh | Kind::Sw | Kind::Sd => fast_handler(kind),
            Kind::Beq | Kind::Bne | Kind::Blt | Kind::Bge | Kind::Bltu | Kind::Bgeu => {
                fast_handler(kind)
            }
            Kind::Fence | Kind::FenceI => fast_handler(kind),
            _ => fast_handler(kind).map(|_| (thread!(nop), false)),
        };
    }
    fast_handler(kind)
}

/// The fast handler of an instruction kind (see [`handler`]).
fn fast_handler(kind: Kind) -> Option<(Handler, bool)> {
    // One function per kind, with the kind a constant in it.
    macro_rules! int {
        ($k:ident, $src:ident) => {{
            fn run(h: &mut Hart, op: &Op, pc: u64) -> u64 {
                let v = super::int_op(Kind::$k, op.rs1(h), int!(@$src h, op));
                op.set_rd(h, v);
                op.next(pc)
            }
            (thread!(run), false)
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
            (thread!(run), false)
        }};
    }
    // Loads and stores, threaded by hand: the fast path (aligned, TLB hit, RAM) calls
    // nothing, so it needs no callee-saved registers; anything else continues in a cold
    // function entered by a tail call.
    macro_rules! load {
        ($k:ident) => {{
            fn threaded(
                h: &mut Hart,
                ops: &[Op; BLOCK_MAX],
                k: usize,
                pc: u64,
                left: usize,
            ) -> Exit {
                const N: usize = super::mem_size(Kind::$k);
                let op = &ops[k & (BLOCK_MAX - 1)];
                let va = op.rs1(h).wrapping_add(op.imm());
                if let Some(off) = h.ram_fast::<N>(va, Access::Read) {
                    // SAFETY: `ram_fast` proved `off + N` in RAM and `off` N-aligned.
                    let v = unsafe { h.bus.ram.load::<N>(off) };
                    op.set_rd(h, super::load_extend(Kind::$k, v));
                    return chain(h, ops, k, pc, op.next(pc), left);
                }
                slow(h, ops, k, pc, left)
            }
            #[cold]
            #[inline(never)]
            fn slow(h: &mut Hart, ops: &[Op; BLOCK_MAX], k: usize, pc: u64, left: usize) -> Exit {
                let next = load_slow(h, &ops[k & (BLOCK_MAX - 1)], pc, Kind::$k);
                chain(h, ops, k, pc, next, left)
            }
            (threaded as Handler, false)
        }};
    }
    macro_rules! store {
        ($k:ident) => {{
            fn threaded(
                h: &mut Hart,
                ops: &[Op; BLOCK_MAX],
                k: usize,
                pc: u64,
                left: usize,
            ) -> Exit {
                const N: usize = super::mem_size(Kind::$k);
                let op = &ops[k & (BLOCK_MAX - 1)];
                let va = op.rs1(h).wrapping_add(op.imm());
                if let Some(off) = h.ram_fast::<N>(va, Access::Write) {
                    if !h.is_code(off) {
                        // SAFETY: `ram_fast` proved `off + N` in RAM and `off` N-aligned.
                        unsafe { h.bus.ram.store::<N>(off, op.rs2(h)) };
                        return chain(h, ops, k, pc, op.next(pc), left);
                    }
                }
                slow(h, ops, k, pc, left)
            }
            /// Everything but a plain RAM store: a store to a page blocks were decoded
            /// from (it may rewrite the running block), and the full path.
            #[cold]
            #[inline(never)]
            fn slow(h: &mut Hart, ops: &[Op; BLOCK_MAX], k: usize, pc: u64, left: usize) -> Exit {
                const N: usize = super::mem_size(Kind::$k);
                let op = &ops[k & (BLOCK_MAX - 1)];
                let va = op.rs1(h).wrapping_add(op.imm());
                let next = if let Some(off) = h.ram_fast::<N>(va, Access::Write) {
                    // SAFETY: `ram_fast` proved `off + N` in RAM and `off` N-aligned.
                    unsafe { h.bus.ram.store::<N>(off, op.rs2(h)) };
                    h.note_store(off);
                    code_written(h, op.next(pc))
                } else {
                    store_slow(h, op, pc, Kind::$k)
                };
                chain(h, ops, k, pc, next, left)
            }
            (threaded as Handler, false)
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
        Kind::Lui => (thread!(lui), false),
        Kind::Auipc => (thread!(auipc), false),
        Kind::Jal => (thread!(jal), true),
        Kind::Jalr => (thread!(jalr), true),
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
        // FENCE has nothing to do on this in-order hart; FENCE.I makes every store (device
        // DMA too) visible to instruction fetch.
        Kind::Fence => (thread!(nop), false),
        Kind::FenceI => (thread!(fence_i), true),
        _ => return None,
    })
}

// The slow paths may write code: a store, or the page walk's A/D update in a page table
// that is also code.
#[cold]
#[inline(never)]
fn load_slow(h: &mut Hart, op: &Op, pc: u64, kind: Kind) -> u64 {
    let epoch = h.code_epoch;
    match h.load_op(kind, op.rs1(h).wrapping_add(op.imm())) {
        Ok(v) => {
            op.set_rd(h, v);
            done(h, epoch, op.next(pc))
        }
        Err(t) => trapped(h, t),
    }
}

#[cold]
#[inline(never)]
fn store_slow(h: &mut Hart, op: &Op, pc: u64, kind: Kind) -> u64 {
    let epoch = h.code_epoch;
    match h.store_op(kind, op.rs1(h).wrapping_add(op.imm()), op.rs2(h)) {
        Ok(()) => done(h, epoch, op.next(pc)),
        Err(t) => trapped(h, t),
    }
}

/// `next`, or [`CODE_WRITTEN`] when the code epoch moved on since `epoch`.
fn done(h: &mut Hart, epoch: u64, next: u64) -> u64 {
    if h.code_epoch == epoch {
        next
    } else {
        code_written(h, next)
    }
}

#[cold]
fn code_written(h: &mut Hart, next: u64) -> u64 {
    h.pc = next;
    CODE_WRITTEN
}

fn fence_i(h: &mut Hart, op: &Op, pc: u64) -> u64 {
    h.code_changed();
    op.next(pc)
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

fn jal_x0(_: &mut Hart, op: &Op, pc: u64) -> u64 {
    pc.wrapping_add(op.imm())
}

fn jalr_x0(h: &mut Hart, op: &Op, _: u64) -> u64 {
    op.rs1(h).wrapping_add(op.imm()) & !1
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
    // The block loop counted this instruction before it ran: CSR reads of `instret` and
    // `cycle` must not see it.
    h.instret = h.instret.wrapping_sub(1);
    let r = h.exec(decode(raw), pc, raw);
    h.instret = h.instret.wrapping_add(1);
    match r {
        Ok(()) => h.pc,
        Err(t) => trapped(h, t),
    }
}
