//! Instruction-level tests of the hart, independent of Linux: programs are assembled with
//! [`crate::decode::asm`] and run from RAM.

use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use crate::decode::asm::*;
use crate::hart::{cause, csr, sstatus, Privilege, SEIP, SSIP, STIP};
use crate::layout::RAM_BASE;
use crate::{ExitReason, Machine, MachineConfig, MmioDevice};

mod blocks;
mod rvc;
mod sv39;

use sv39::{map4k, paged, A, R, V, VA, X};

/// Console capture (also used by the UART's tests).
#[derive(Clone, Default)]
pub(crate) struct Sink(pub(crate) Arc<Mutex<Vec<u8>>>);
impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) const CODE: u64 = RAM_BASE;
/// Where trap handlers go in these tests.
pub(crate) const HANDLER: u64 = RAM_BASE + 0x8000;
pub(crate) const DATA: u64 = RAM_BASE + 0x1_0000;

fn machine_with(sink: Sink) -> Machine {
    let mut m = Machine::new(MachineConfig {
        ram_size: 4 << 20,
        console: Box::new(sink),
        ..Default::default()
    })
    .unwrap();
    m.hart.stvec = HANDLER;
    m
}

pub(crate) fn machine() -> Machine {
    machine_with(Sink::default())
}

pub(crate) fn put(m: &Machine, addr: u64, code: &[u32]) {
    for (i, w) in code.iter().enumerate() {
        m.memory()
            .write_obj(*w, GuestAddress(addr + 4 * i as u64))
            .unwrap();
    }
}

pub(crate) fn put_u64(m: &Machine, addr: u64, v: u64) {
    m.memory().write_obj(v, GuestAddress(addr)).unwrap();
}

pub(crate) fn get_u64(m: &Machine, addr: u64) -> u64 {
    m.memory().read_obj(GuestAddress(addr)).unwrap()
}

/// Executes `n` instructions one by one (traps count as one). Like [`Machine::run`], it
/// first lets the hart see code written behind its back (`put`) since the last call.
pub(crate) fn step(m: &mut Machine, n: usize) {
    m.hart.code_changed();
    for _ in 0..n {
        m.hart.run_batch::<false>(1);
    }
}

/// Loads `code` at CODE and runs all of it (straight-line).
fn run(code: &[u32]) -> Machine {
    let mut m = machine();
    put(&m, CODE, code);
    step(&mut m, code.len());
    m
}

/// `li rd, v` for any 64-bit v, as a sequence of lui/addi(w)/slli/addi.
pub(crate) fn li(rd: u32, v: u64) -> Vec<u32> {
    let v = v as i64;
    if (-2048..2048).contains(&v) {
        return vec![addi(rd, 0, v as i32)];
    }
    if v == (v as i32) as i64 {
        let lo = ((v << 52) >> 52) as i32;
        let hi = ((v - lo as i64) >> 12) as u32 & 0xfffff;
        return vec![lui(rd, hi), addiw(rd, rd, lo)];
    }
    let lo = ((v << 52) >> 52) as i32;
    let rest = (v - lo as i64) >> 12;
    let shift = rest.trailing_zeros().min(40);
    let mut seq = li(rd, (rest >> shift) as u64);
    seq.push(slli(rd, rd, 12 + shift));
    if lo != 0 {
        seq.push(addi(rd, rd, lo));
    }
    seq
}

fn prog(parts: &[Vec<u32>]) -> Vec<u32> {
    parts.concat()
}

#[test]
fn li_helper_builds_any_constant() {
    for v in [
        0u64,
        1,
        2047,
        2048,
        0x7fff_ffff,
        0x8000_0000,
        u64::MAX,
        0x1234_5678_9abc_def0,
        1 << 63,
        RAM_BASE,
    ] {
        let m = run(&li(5, v));
        assert_eq!(m.reg(5), v, "{v:#x}");
    }
}

#[test]
fn alu_immediate_and_register() {
    let m = run(&prog(&[
        li(1, 0xffff_ffff_ffff_fff0), // -16
        li(2, 3),
        vec![
            addi(3, 1, 5),         // -11
            opi(2, 4, 1, 0),       // slti -16 < 0 = 1
            opi(3, 5, 1, 0),       // sltiu huge < 0 = 0
            opi(4, 6, 2, -1),      // xori 3 ^ -1 = !3
            opi(6, 7, 2, 0x40),    // ori
            opi(7, 8, 1, 0xff),    // andi = 0xf0
            slli(9, 2, 63),        // 1<<63 | ...
            srli(10, 1, 60),       // 0xf
            srai(11, 1, 2),        // -4
            add(12, 1, 2),         // -13
            op(0x20, 0, 13, 2, 1), // sub 3 - -16 = 19
            op(0, 1, 14, 2, 2),    // sll 3 << 3 = 24
            op(0, 2, 15, 1, 2),    // slt 1
            op(0, 3, 16, 1, 2),    // sltu 0
            op(0, 4, 17, 1, 2),    // xor
            op(0, 5, 18, 1, 2),    // srl
            op(0x20, 5, 19, 1, 2), // sra -2
            op(0, 6, 20, 1, 2),    // or
            op(0, 7, 21, 1, 2),    // and
            addi(0, 0, 5),         // x0 stays 0
        ],
    ]));
    assert_eq!(m.reg(3) as i64, -11);
    assert_eq!(m.reg(4), 1);
    assert_eq!(m.reg(5), 0);
    assert_eq!(m.reg(6), !3);
    assert_eq!(m.reg(7), 0x43);
    assert_eq!(m.reg(8), 0xf0);
    assert_eq!(m.reg(9), 1 << 63);
    assert_eq!(m.reg(10), 0xf);
    assert_eq!(m.reg(11) as i64, -4);
    assert_eq!(m.reg(12) as i64, -13);
    assert_eq!(m.reg(13), 19);
    assert_eq!(m.reg(14), 24);
    assert_eq!(m.reg(15), 1);
    assert_eq!(m.reg(16), 0);
    assert_eq!(m.reg(17), 0xffff_ffff_ffff_fff0 ^ 3);
    assert_eq!(m.reg(18), 0xffff_ffff_ffff_fff0 >> 3);
    assert_eq!(m.reg(19) as i64, -2);
    assert_eq!(m.reg(20), 0xffff_ffff_ffff_fff3);
    assert_eq!(m.reg(21), 0);
    assert_eq!(m.reg(0), 0);
}

#[test]
fn alu_word_ops_sign_extend() {
    let m = run(&prog(&[
        li(1, 0x7fff_ffff),
        li(2, 0x1_0000_0001),
        vec![
            addiw(3, 1, 1),          // 0x80000000 -> sign-extended
            slliw(4, 2, 31),         // 0x80000000
            srliw(5, 3, 4),          // 0x08000000
            sraiw(6, 3, 4),          // 0xf8000000 sext
            op32(0, 0, 7, 1, 2),     // addw 0x7fffffff + 1
            op32(0x20, 0, 8, 0, 2),  // subw 0 - 1 = -1
            op32(0, 1, 9, 2, 2),     // sllw 1 << (1) = 2
            op32(0, 5, 10, 3, 2),    // srlw 0x80000000 >> 1
            op32(0x20, 5, 11, 3, 2), // sraw
            lui(12, 0x80000),        // sign-extended upper immediate
            auipc(13, 1),
        ],
    ]));
    assert_eq!(m.reg(3), 0xffff_ffff_8000_0000);
    assert_eq!(m.reg(4), 0xffff_ffff_8000_0000);
    assert_eq!(m.reg(5), 0x0800_0000);
    assert_eq!(m.reg(6), 0xffff_ffff_f800_0000);
    assert_eq!(m.reg(7), 0xffff_ffff_8000_0000);
    assert_eq!(m.reg(8), u64::MAX);
    assert_eq!(m.reg(9), 2);
    assert_eq!(m.reg(10), 0x4000_0000);
    assert_eq!(m.reg(11), 0xffff_ffff_c000_0000);
    assert_eq!(m.reg(12), 0xffff_ffff_8000_0000);
    let auipc_pc = CODE + 4 * (li(1, 0x7fff_ffff).len() + li(2, 0x1_0000_0001).len() + 10) as u64;
    assert_eq!(m.reg(13), auipc_pc + 0x1000);
}

#[test]
fn branches_and_jumps() {
    // Each taken branch skips one `addi x31, x31, 1`; each not-taken one falls into it.
    type Case = (fn(u32, u32, i32) -> u32, u64, u64, bool);
    let cases: [Case; 12] = [
        (beq, 5, 5, true),
        (beq, 5, 6, false),
        (bne, 5, 6, true),
        (bne, 5, 5, false),
        (blt, u64::MAX, 0, true),
        (blt, 0, u64::MAX, false),
        (bge, 0, u64::MAX, true),
        (bge, u64::MAX, 0, false),
        (bltu, 0, u64::MAX, true),
        (bltu, u64::MAX, 0, false),
        (bgeu, u64::MAX, 0, true),
        (bgeu, 3, 3, true),
    ];
    for (i, (br, a, b, taken)) in cases.into_iter().enumerate() {
        let code = prog(&[
            li(1, a),
            li(2, b),
            vec![br(1, 2, 8), addi(31, 31, 1), addi(30, 0, 7)],
        ]);
        let mut m = machine();
        put(&m, CODE, &code);
        step(&mut m, code.len() - usize::from(taken));
        assert_eq!(m.reg(31), u64::from(!taken), "case {i}");
        assert_eq!(m.reg(30), 7, "case {i}");
    }
    // jal links and jumps backwards/forwards; jalr clears bit 0.
    let mut m = machine();
    put(&m, CODE, &[jal(1, 12)]);
    put(&m, CODE + 12, &[jalr(2, 1, 1)]);
    step(&mut m, 2);
    assert_eq!(m.reg(1), CODE + 4);
    assert_eq!(m.reg(2), CODE + 16);
    assert_eq!(m.pc(), CODE + 4);
}

#[test]
fn loads_and_stores_of_every_width() {
    let mut m = machine();
    put_u64(&m, DATA, 0x8182_8384_8586_8788);
    let code = prog(&[
        li(1, DATA),
        vec![
            load(0, 2, 1, 0),       // lb  0x88 -> sext
            load(4, 3, 1, 0),       // lbu
            load(1, 4, 1, 0),       // lh  0x8788
            load(5, 5, 1, 0),       // lhu
            load(2, 6, 1, 0),       // lw  0x85868788
            load(6, 7, 1, 0),       // lwu
            load(3, 8, 1, 0),       // ld
            store(0, 1, 8, 8),      // sb
            store(1, 1, 8, 16),     // sh
            store(2, 1, 8, 24),     // sw
            store(3, 1, 8, 32),     // sd
            load(3, 9, 1, -8 + 16), // ld at DATA+8
        ],
    ]);
    put(&m, CODE, &code);
    step(&mut m, code.len());
    assert_eq!(m.reg(2), 0xffff_ffff_ffff_ff88);
    assert_eq!(m.reg(3), 0x88);
    assert_eq!(m.reg(4), 0xffff_ffff_ffff_8788);
    assert_eq!(m.reg(5), 0x8788);
    assert_eq!(m.reg(6), 0xffff_ffff_8586_8788);
    assert_eq!(m.reg(7), 0x8586_8788);
    assert_eq!(m.reg(8), 0x8182_8384_8586_8788);
    assert_eq!(get_u64(&m, DATA + 8), 0x88);
    assert_eq!(get_u64(&m, DATA + 16), 0x8788);
    assert_eq!(get_u64(&m, DATA + 24), 0x8586_8788);
    assert_eq!(get_u64(&m, DATA + 32), 0x8182_8384_8586_8788);
    assert_eq!(m.reg(9), 0x88);
}

#[test]
fn misaligned_loads_and_stores_are_done_bytewise() {
    let mut m = machine();
    put_u64(&m, DATA, 0x0807_0605_0403_0201);
    put_u64(&m, DATA + 8, 0x100f_0e0d_0c0b_0a09);
    let code = prog(&[
        li(1, DATA),
        vec![ld(2, 1, 3), load(1, 3, 1, 7), load(2, 4, 1, 6)],
        li(5, 0x1122_3344_5566_7788),
        vec![store(3, 1, 5, 0x21), store(2, 1, 5, 0x33)],
    ]);
    put(&m, CODE, &code);
    step(&mut m, code.len());
    assert_eq!(m.reg(2), 0x0b0a_0908_0706_0504);
    assert_eq!(m.reg(3), 0x0908);
    assert_eq!(m.reg(4), 0x0a09_0807);
    let mut b = [0u8; 8];
    m.memory()
        .read_slice(&mut b, GuestAddress(DATA + 0x21))
        .unwrap();
    assert_eq!(u64::from_le_bytes(b), 0x1122_3344_5566_7788);
    m.memory()
        .read_slice(&mut b[..4], GuestAddress(DATA + 0x33))
        .unwrap();
    assert_eq!(u32::from_le_bytes(b[..4].try_into().unwrap()), 0x5566_7788);
}

#[test]
fn mul_div_edge_cases() {
    let min = 1u64 << 63;
    let cases: Vec<(u32, u32, bool, u64, u64, u64)> = vec![
        // (funct3, funct7=1, word?, a, b, expected)
        (0, 1, false, 7, u64::MAX, (-7i64) as u64),  // mul
        (1, 1, false, u64::MAX, u64::MAX, 0),        // mulh -1*-1 hi
        (1, 1, false, min, min, 1 << 62),            // mulh
        (2, 1, false, u64::MAX, u64::MAX, u64::MAX), // mulhsu -1 * (2^64-1)
        (3, 1, false, u64::MAX, u64::MAX, u64::MAX - 1), // mulhu
        (4, 1, false, 7, 0, u64::MAX),               // div by zero
        (4, 1, false, min, u64::MAX, min),           // div overflow
        (4, 1, false, (-7i64) as u64, 2, (-3i64) as u64), // div truncates
        (5, 1, false, 7, 0, u64::MAX),               // divu by zero
        (6, 1, false, 7, 0, 7),                      // rem by zero
        (6, 1, false, min, u64::MAX, 0),             // rem overflow
        (6, 1, false, (-7i64) as u64, 2, u64::MAX),  // rem sign of dividend
        (7, 1, false, 7, 0, 7),                      // remu by zero
        (
            0,
            1,
            true,
            0x1_0000_0003,
            0x8000_0000,
            0xffff_ffff_8000_0000,
        ), // mulw
        (4, 1, true, 0x8000_0000, u64::MAX, 0xffff_ffff_8000_0000), // divw overflow
        (4, 1, true, 5, 0, u64::MAX),                // divw by zero
        (5, 1, true, 0xffff_fffe, 0, u64::MAX),      // divuw by zero
        (5, 1, true, 0xffff_fffe, 1, 0xffff_ffff_ffff_fffe), // divuw result sext
        (6, 1, true, 0x8000_0000, u64::MAX, 0),      // remw overflow
        (6, 1, true, 0x1_8000_0005, 0, 0xffff_ffff_8000_0005), // remw by zero
        (7, 1, true, 0x1_8000_0005, 0, 0xffff_ffff_8000_0005), // remuw by zero
    ];
    for (i, (f3, f7, word, a, b, want)) in cases.into_iter().enumerate() {
        let insn = if word {
            op32(f7, f3, 3, 1, 2)
        } else {
            op(f7, f3, 3, 1, 2)
        };
        let m = run(&prog(&[li(1, a), li(2, b), vec![insn]]));
        assert_eq!(m.reg(3), want, "case {i}");
    }
}

#[test]
fn lr_sc_reservation_semantics() {
    let mut m = machine();
    put_u64(&m, DATA, 41);
    let code = prog(&[
        li(1, DATA),
        vec![
            amo(0x02, 3, 2, 1, 0), // lr.d x2, (x1)
            addi(2, 2, 1),
            amo(0x03, 3, 3, 1, 2), // sc.d x3, x2, (x1): succeeds -> 0
            amo(0x03, 3, 4, 1, 2), // sc.d again: no reservation -> 1
            amo(0x02, 2, 5, 1, 0), // lr.w
            amo(0x03, 2, 6, 1, 0), // sc.w to the same address -> 0, stores 0 low word
        ],
    ]);
    put(&m, CODE, &code);
    step(&mut m, code.len());
    assert_eq!(m.reg(2), 42);
    assert_eq!(m.reg(3), 0);
    assert_eq!(m.reg(4), 1);
    assert_eq!(m.reg(5), 42);
    assert_eq!(m.reg(6), 0);
    assert_eq!(get_u64(&m, DATA), 0);

    // A trap between LR and SC drops the reservation.
    let mut m = machine();
    let code = prog(&[li(1, DATA), vec![amo(0x02, 3, 2, 1, 0), EBREAK]]);
    put(&m, CODE, &code);
    put(&m, HANDLER, &[amo(0x03, 3, 3, 1, 0)]);
    step(&mut m, code.len() + 1);
    assert_eq!(m.reg(3), 1);
}

#[test]
fn amos_compute_and_return_old_value() {
    // (funct5, word?, memory, rs2, expected memory)
    let cases: [(u32, bool, u64, u64, u64); 14] = [
        (0x01, false, 5, 9, 9),
        (0x00, false, 5, 9, 14),
        (0x04, false, 0b1100, 0b1010, 0b0110),
        (0x0c, false, 0b1100, 0b1010, 0b1000),
        (0x08, false, 0b1100, 0b1010, 0b1110),
        (0x10, false, u64::MAX, 1, u64::MAX),
        (0x14, false, u64::MAX, 1, 1),
        (0x18, false, u64::MAX, 1, 1),
        (0x1c, false, u64::MAX, 1, u64::MAX),
        (0x00, true, 0xaaaa_aaaa_ffff_ffff, 1, 0xaaaa_aaaa_0000_0000),
        (0x10, true, 0x8000_0000, 1, 0x8000_0000),
        (0x14, true, 0x8000_0000, 1, 1),
        (0x18, true, 0x8000_0000, 1, 1),
        (0x1c, true, 0x8000_0000, 1, 0x8000_0000),
    ];
    for (i, (f5, word, mem, src, want)) in cases.into_iter().enumerate() {
        let mut m = machine();
        put_u64(&m, DATA, mem);
        let code = prog(&[
            li(1, DATA),
            li(2, src),
            vec![amo(f5, if word { 2 } else { 3 }, 3, 1, 2)],
        ]);
        put(&m, CODE, &code);
        step(&mut m, code.len());
        assert_eq!(get_u64(&m, DATA), want, "case {i}");
        let old = if word {
            mem as u32 as i32 as i64 as u64
        } else {
            mem
        };
        assert_eq!(m.reg(3), old, "case {i}");
    }
    // Misaligned AMO: store/AMO address misaligned; misaligned LR: load misaligned.
    let mut m = machine();
    let code = prog(&[li(1, DATA + 4), vec![amo(0x00, 3, 3, 1, 2)]]);
    put(&m, CODE, &code);
    step(&mut m, code.len());
    assert_eq!(
        (m.hart.scause, m.hart.stval),
        (cause::STORE_MISALIGNED, DATA + 4)
    );
    let mut m = machine();
    let code = prog(&[li(1, DATA + 2), vec![amo(0x02, 2, 3, 1, 0)]]);
    put(&m, CODE, &code);
    step(&mut m, code.len());
    assert_eq!(
        (m.hart.scause, m.hart.stval),
        (cause::LOAD_MISALIGNED, DATA + 2)
    );
}

#[test]
fn csr_read_write_set_clear() {
    let m = run(&prog(&[
        li(1, 0xf0),
        vec![
            csrrw(0, csr::SSCRATCH as u32, 1),     // sscratch = 0xf0
            csr(2, 2, csr::SSCRATCH as u32, 0),    // csrrs x2, sscratch, x0 (read only)
            csr(5, 3, csr::SSCRATCH as u32, 0x0f), // csrrwi: x3 = 0xf0, sscratch = 0xf
            csr(6, 4, csr::SSCRATCH as u32, 0x10), // csrrsi: x4 = 0xf, |= 0x10
            csr(7, 5, csr::SSCRATCH as u32, 0x01), // csrrci: x5 = 0x1f, &= !1
            csr(3, 6, csr::SSCRATCH as u32, 1),    // csrrc x6 = 0x1e, &= !0xf0
            csr(2, 7, csr::SSCRATCH as u32, 0),
            csr(2, 8, csr::SSTATUS as u32, 0),
            csr(2, 9, csr::TIME as u32, 0),
            csr(2, 10, csr::CYCLE as u32, 0),
            csrrw(0, csr::SEPC as u32, 1), // sepc[0] is zero (IALIGN = 16)
            csr(5, 0, csr::SEPC as u32, 0x7),
            csr(2, 11, csr::SEPC as u32, 0),
        ],
    ]));
    assert_eq!(m.reg(2), 0xf0);
    assert_eq!(m.reg(3), 0xf0);
    assert_eq!(m.reg(4), 0xf);
    assert_eq!(m.reg(5), 0x1f);
    assert_eq!(m.reg(6), 0x1e);
    assert_eq!(m.reg(7), 0x0e);
    assert_eq!(m.reg(8), sstatus::UXL64);
    assert!(m.reg(10) > 5, "cycle counts");
    assert_eq!(m.reg(11), 6);
}

#[test]
fn illegal_csr_accesses_trap_with_the_instruction_in_stval() {
    // Write to a read-only CSR, unknown CSR, M-mode CSR (mstatus).
    for insn in [
        csrrw(0, csr::CYCLE as u32, 1),
        csr(2, 1, 0x5c0, 0),
        csr(2, 1, 0x300, 0),
        csr(2, 1, 0x14d, 0), // stimecmp: no Sstc
    ] {
        let mut m = run(&[insn]);
        assert_eq!(m.pc(), HANDLER);
        assert_eq!(
            (m.hart.scause, m.hart.stval),
            (cause::ILLEGAL_INSN, u64::from(insn))
        );
        step(&mut m, 0);
    }
    // Reading a read-only CSR with csrrs x0 is fine.
    let m = run(&[csr(2, 1, csr::INSTRET as u32, 0)]);
    assert_eq!(m.pc(), CODE + 4);
}

/// Sets up U-mode at `CODE` via sret.
fn enter_user(m: &mut Machine) {
    m.hart.sepc = CODE;
    m.hart.sstatus &= !sstatus::SPP;
    put(m, RAM_BASE + 0x7000, &[SRET]);
    m.set_pc(RAM_BASE + 0x7000);
    step(m, 1);
    assert_eq!(m.hart.prv, Privilege::User);
    assert_eq!(m.pc(), CODE);
}

#[test]
fn u_mode_csr_access_is_checked() {
    for (insn, legal) in [
        (csr(2, 1, csr::SSTATUS as u32, 0), false),
        (csr(2, 1, csr::TIME as u32, 0), true),
        (csr(2, 1, csr::CYCLE as u32, 0), true),
    ] {
        let mut m = machine();
        put(&m, CODE, &[insn]);
        enter_user(&mut m);
        step(&mut m, 1);
        assert_eq!(m.pc() == HANDLER, !legal, "{insn:#x}");
    }
    // scounteren.TM = 0 makes rdtime illegal in U-mode.
    let mut m = machine();
    m.hart.scounteren = 0x5;
    put(&m, CODE, &[csr(2, 1, csr::TIME as u32, 0)]);
    enter_user(&mut m);
    step(&mut m, 1);
    assert_eq!(m.hart.scause, cause::ILLEGAL_INSN);
    // sret, wfi and sfence.vma are illegal in U-mode.
    for insn in [SRET, WFI, sfence_vma(0, 0)] {
        let mut m = machine();
        put(&m, CODE, &[insn]);
        enter_user(&mut m);
        step(&mut m, 1);
        assert_eq!(
            (m.hart.scause, m.hart.stval),
            (cause::ILLEGAL_INSN, u64::from(insn))
        );
    }
}

#[test]
fn ecall_from_u_and_sret_round_trip() {
    let mut m = machine();
    put(&m, CODE, &[ECALL]);
    m.hart.sstatus |= sstatus::SIE;
    m.hart.sstatus |= sstatus::SPIE;
    enter_user(&mut m);
    assert_ne!(m.hart.sstatus & sstatus::SIE, 0, "SIE restored from SPIE");
    step(&mut m, 1);
    assert_eq!(m.pc(), HANDLER);
    assert_eq!(m.hart.scause, cause::ECALL_U);
    assert_eq!(m.hart.sepc, CODE);
    assert_eq!(m.hart.prv, Privilege::Supervisor);
    assert_eq!(m.hart.sstatus & sstatus::SPP, 0, "came from U");
    assert_eq!(m.hart.sstatus & sstatus::SIE, 0);
    assert_ne!(m.hart.sstatus & sstatus::SPIE, 0);
    // Handler: sepc += 4; sret.
    put(
        &m,
        HANDLER,
        &[
            csr(2, 5, csr::SEPC as u32, 0),
            addi(5, 5, 4),
            csrrw(0, csr::SEPC as u32, 5),
            SRET,
        ],
    );
    step(&mut m, 4);
    assert_eq!(m.pc(), CODE + 4);
    assert_eq!(m.hart.prv, Privilege::User);
}

#[test]
fn illegal_instruction_and_ebreak() {
    let m = run(&[0xffff_ffff]);
    assert_eq!(
        (m.hart.scause, m.hart.stval, m.hart.sepc),
        (cause::ILLEGAL_INSN, 0xffff_ffff, CODE)
    );
    assert_eq!(m.hart.sstatus & sstatus::SPP, sstatus::SPP);
    let m = run(&[EBREAK]);
    assert_eq!((m.hart.scause, m.hart.stval), (cause::BREAKPOINT, CODE));
    // Fetch from a hole in the address space: instruction access fault.
    let mut m = machine();
    m.set_pc(0x4000_0000);
    step(&mut m, 1);
    assert_eq!(
        (m.hart.scause, m.hart.stval),
        (cause::INSN_ACCESS_FAULT, 0x4000_0000)
    );
    // Load from a hole: load access fault.
    let m = run(&prog(&[li(1, 0x3000_0000), vec![load(3, 2, 1, 8)]]));
    assert_eq!(
        (m.hart.scause, m.hart.stval),
        (cause::LOAD_ACCESS_FAULT, 0x3000_0008)
    );
}

#[test]
fn timer_interrupt_through_sbi_is_taken_and_vectored() {
    let mut m = machine();
    // sbi_set_timer(0): a7 = TIME, a6 = 0, a0 = 0.
    let code = prog(&[
        li(17, crate::sbi::eid::TIME),
        li(16, 0),
        li(10, 0),
        vec![ECALL, addi(9, 0, 1)],
    ]);
    put(&m, CODE, &code);
    m.hart.stvec = HANDLER | 1;
    m.hart.sie = STIP;
    step(&mut m, code.len());
    assert_eq!(m.reg(10), 0, "SBI_SUCCESS");
    // Interrupts are masked in S-mode with SIE = 0.
    m.hart.poll_interrupts();
    assert_eq!(m.hart.sip & STIP, STIP);
    assert_eq!(m.pc(), CODE + 4 * code.len() as u64);
    m.hart.sstatus |= sstatus::SIE;
    m.hart.poll_interrupts();
    assert_eq!(m.hart.scause, (1 << 63) | cause::IRQ_S_TIMER);
    assert_eq!(m.pc(), HANDLER + 4 * cause::IRQ_S_TIMER);
    assert_eq!(m.hart.sepc, CODE + 4 * code.len() as u64);
    assert_eq!(m.hart.sstatus & sstatus::SIE, 0);
    // set_timer to the far future clears STIP.
    m.hart.set_timer(u64::MAX);
    m.hart.poll_interrupts();
    assert_eq!(m.hart.sip & STIP, 0);
}

#[test]
fn interrupts_are_taken_in_u_mode_regardless_of_sie() {
    let mut m = machine();
    put(&m, CODE, &[addi(1, 0, 1), addi(1, 1, 1)]);
    enter_user(&mut m);
    m.hart.sie = SSIP;
    // Software interrupt via sip.SSIP (as the S-mode kernel would set it).
    m.hart.csr_write(csr::SIP, SSIP);
    step(&mut m, 1);
    m.hart.poll_interrupts();
    assert_eq!(m.hart.scause, (1 << 63) | cause::IRQ_S_SOFT);
    assert_eq!(m.hart.sepc, CODE + 4);
    assert_eq!(m.hart.prv, Privilege::Supervisor);
}

#[test]
fn plic_external_interrupt_reaches_the_hart_and_is_claimed_by_the_guest() {
    let mut m = machine();
    let line = m.irq_line(5).unwrap();
    // Guest programs priority 1, enables source 5, threshold 0; then claims and completes.
    let code = prog(&[
        li(1, crate::layout::PLIC_BASE),
        li(2, 1),
        vec![sw(1, 2, 5 * 4)],
        li(3, crate::layout::PLIC_BASE + 0x2000),
        li(2, 1 << 5),
        vec![sw(3, 2, 0)],
        li(4, crate::layout::PLIC_BASE + 0x20_0004),
        vec![lw(5, 4, 0), sw(4, 5, 0), lw(6, 4, 0)],
    ]);
    put(&m, CODE, &code);
    m.hart.sie = SEIP;
    m.hart.sstatus |= sstatus::SIE;
    let before_claim = code.len() - 3;
    step(&mut m, before_claim);
    m.hart.poll_interrupts();
    assert_eq!(m.pc(), CODE + 4 * before_claim as u64, "no interrupt yet");
    line.set_level(true);
    m.hart.sstatus &= !sstatus::SIE;
    m.hart.poll_interrupts();
    assert_eq!(m.hart.sip & SEIP, SEIP);
    step(&mut m, 1); // claim
    assert_eq!(m.reg(5), 5);
    m.hart.poll_interrupts();
    assert_eq!(m.hart.sip & SEIP, 0, "claimed");
    line.set_level(false);
    step(&mut m, 2); // complete, claim again
    assert_eq!(m.reg(6), 0);
}

#[test]
fn wfi_sleeps_until_the_timer() {
    let mut m = Machine::new(MachineConfig {
        ram_size: 1 << 20,
        console: Box::new(std::io::sink()),
        timeout: Some(std::time::Duration::from_secs(5)),
        ..Default::default()
    })
    .unwrap();
    // Timer 20 ms ahead, STIE on, SIE off: WFI wakes and execution continues to a shutdown.
    let now = m.guest_time();
    let code = prog(&[
        li(17, crate::sbi::eid::TIME),
        li(16, 0),
        li(10, now + 200_000),
        vec![ECALL, WFI],
        li(17, crate::sbi::eid::SRST),
        li(16, 0),
        li(10, 0),
        li(11, 0),
        vec![ECALL],
    ]);
    put(&m, CODE, &code);
    m.hart.sie = STIP;
    let t = std::time::Instant::now();
    assert_eq!(m.run().unwrap(), ExitReason::PowerOff);
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(15),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn sbi_base_console_and_reset() {
    let sink = Sink::default();
    let mut m = machine_with(sink.clone());
    let code = prog(&[
        li(17, 0x10),
        li(16, 0),
        vec![ECALL, addi(20, 10, 0), addi(21, 11, 0)], // spec version
        li(16, 3),
        li(10, crate::sbi::eid::SRST),
        vec![ECALL, addi(22, 11, 0)], // probe SRST
        li(10, 0x1234_5678),
        vec![ECALL, addi(23, 11, 0)], // probe unknown
        li(17, 0x0bad),
        vec![ECALL, addi(24, 10, 0)], // unknown extension
        li(17, 1),
        li(10, u64::from(b'k')),
        vec![ECALL], // legacy putchar
        li(17, crate::sbi::eid::HSM),
        li(16, 2),
        li(10, 0),
        vec![ECALL, addi(25, 10, 0), addi(26, 11, 0)], // hart 0 status
        li(17, crate::sbi::eid::SRST),
        li(16, 0),
        li(10, 1),
        li(11, 0),
        vec![ECALL],
    ]);
    put(&m, CODE, &code);
    assert_eq!(m.run().unwrap(), ExitReason::Reboot);
    assert_eq!((m.reg(20), m.reg(21)), (0, 2 << 24));
    assert_eq!(m.reg(22), 1);
    assert_eq!(m.reg(23), 0);
    assert_eq!(m.reg(24) as i64, -2);
    assert_eq!((m.reg(25), m.reg(26)), (0, 0));
    assert_eq!(&*sink.0.lock().unwrap(), b"k");
}

#[test]
fn legacy_shutdown_powers_off() {
    let mut m = machine();
    put(&m, CODE, &prog(&[li(17, 8), vec![ECALL]]));
    assert_eq!(m.run().unwrap(), ExitReason::PowerOff);
}

#[test]
fn instruction_limit_stops_an_endless_loop() {
    let mut m = Machine::new(MachineConfig {
        ram_size: 1 << 20,
        console: Box::new(std::io::sink()),
        instruction_limit: Some(10_000),
        ..Default::default()
    })
    .unwrap();
    put(&m, CODE, &[jal(0, 0)]);
    assert_eq!(m.run().unwrap(), ExitReason::InstructionLimit);
    assert_eq!(m.instructions_retired(), 10_000);
}

#[test]
fn stop_handle_ends_a_running_and_a_sleeping_machine() {
    // An endless loop, then (second run) a hart asleep in WFI with no timer armed.
    for code in [vec![jal(0, 0)], vec![WFI, jal(0, -4)]] {
        let mut m = machine();
        put(&m, CODE, &code);
        let stop = m.stop_handle();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            stop.stop();
        });
        assert_eq!(m.run().unwrap(), ExitReason::Stopped);
        t.join().unwrap();
    }
    // A stop asked before the run ends it at once.
    let mut m = machine();
    put(&m, CODE, &[jal(0, 0)]);
    m.stop_handle().stop();
    assert_eq!(m.run().unwrap(), ExitReason::Stopped);
}

/// A device that records accesses and answers reads with a pattern.
/// (is_write, offset, width, value written)
type ProbeLog = Arc<Mutex<Vec<(bool, u64, usize, u64)>>>;
struct Probe(ProbeLog);
impl MmioDevice for Probe {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = 0x10 + i as u8;
        }
        self.0.lock().unwrap().push((false, offset, data.len(), 0));
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut v = [0u8; 8];
        v[..data.len()].copy_from_slice(data);
        self.0
            .lock()
            .unwrap()
            .push((true, offset, data.len(), u64::from_le_bytes(v)));
    }
}

#[test]
fn guest_accesses_reach_mmio_devices_with_their_width() {
    let mut m = machine();
    let log = Arc::new(Mutex::new(Vec::new()));
    m.add_mmio_device(0x1000_1000, 0x1000, Box::new(Probe(log.clone())))
        .unwrap();
    let code = prog(&[
        li(1, 0x1000_1000),
        li(2, 0x1122_3344_5566_7788),
        li(7, 0x1000_1ff0),
        vec![
            load(2, 3, 1, 0x70),  // lw
            load(4, 4, 7, 0xf),   // lbu of the last byte
            store(1, 1, 2, 0x50), // sh
            store(3, 1, 2, 0x58), // sd
        ],
        li(5, 0x1000_2000),
        vec![load(0, 6, 5, 0)], // one past the window: access fault
    ]);
    put(&m, CODE, &code);
    step(&mut m, code.len());
    assert_eq!(m.reg(3), 0x1312_1110);
    assert_eq!(m.reg(4), 0x10);
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            (false, 0x70, 4, 0),
            (false, 0xfff, 1, 0),
            (true, 0x50, 2, 0x7788),
            (true, 0x58, 8, 0x1122_3344_5566_7788)
        ]
    );
    assert_eq!(
        (m.hart.scause, m.hart.stval),
        (cause::LOAD_ACCESS_FAULT, 0x1000_2000)
    );
}

#[test]
fn uart_output_from_the_guest() {
    let sink = Sink::default();
    let mut m = machine_with(sink.clone());
    let code = prog(&[
        li(1, crate::layout::UART_BASE),
        li(2, u64::from(b'Z')),
        vec![store(0, 1, 2, 0), load(4, 3, 1, 5)],
    ]);
    put(&m, CODE, &code);
    step(&mut m, code.len());
    assert_eq!(&*sink.0.lock().unwrap(), b"Z");
    assert_eq!(m.reg(3), 0x60, "LSR: THRE | TEMT");
}

#[test]
fn self_modifying_code_is_seen_by_the_decode_cache() {
    let mut m = machine();
    put(&m, CODE, &[addi(1, 0, 1), jal(0, -4)]);
    step(&mut m, 1);
    assert_eq!(m.reg(1), 1);
    put(&m, CODE, &[addi(1, 0, 2)]);
    step(&mut m, 2);
    assert_eq!(m.reg(1), 2);
}

#[test]
fn seip_follows_the_plic_through_poll() {
    let mut m = machine();
    let line = m.irq_line(10).unwrap();
    m.hart.bus.plic.write(10 * 4, &1u32.to_le_bytes());
    m.hart.bus.plic.write(0x2000, &(1u32 << 10).to_le_bytes());
    line.set_level(true);
    m.hart.poll_interrupts();
    assert_eq!(m.hart.sip & SEIP, SEIP);
    line.set_level(false);
    m.hart.poll_interrupts();
    assert_eq!(m.hart.sip & SEIP, 0);
}

/// Throughput of a simple loop; run with `cargo test --release -- --ignored --nocapture mips`.
#[test]
#[ignore = "benchmark; run in release with --nocapture"]
fn mips_loop() {
    let mut m = Machine::new(MachineConfig {
        ram_size: 4 << 20,
        console: Box::new(std::io::sink()),
        instruction_limit: Some(if cfg!(debug_assertions) {
            20_000_000
        } else {
            500_000_000
        }),
        ..Default::default()
    })
    .unwrap();
    // A loop mixing ALU, loads, stores and a branch.
    let code = prog(&[
        li(1, DATA),
        vec![
            addi(2, 2, 1),
            load(3, 3, 1, 0),
            add(3, 3, 2),
            store(3, 1, 3, 0),
            op(1, 0, 4, 3, 2),
            jal(0, -20),
        ],
    ]);
    put(&m, CODE, &code);
    let t = std::time::Instant::now();
    assert_eq!(m.run().unwrap(), ExitReason::InstructionLimit);
    let secs = t.elapsed().as_secs_f64();
    println!("{:.1} MIPS", m.instructions_retired() as f64 / secs / 1e6);
}
