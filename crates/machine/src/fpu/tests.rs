//! F and D instruction tests in the style of riscv-tests / riscv-arch-test: operands are put
//! in registers, one instruction runs on the hart (decode + execute), and the result, the
//! `fflags` and the trap state are compared with values worked out from the ISA manual and
//! IEEE 754 (each case says why), not taken from this implementation.

use crate::decode::{decode, Kind};
use crate::hart::{cause, csr as hcsr, sstatus};
use crate::tests::{machine, put, step, CODE, DATA, HANDLER};
use crate::Machine;

use super::csr;
use super::soft::flag::{DZ, NV, NX, OF, UF};

// ---- encoders ----------------------------------------------------------------------------

const S: u32 = 0;
const D: u32 = 1;
const RNE: u32 = 0;
const RTZ: u32 = 1;
const RDN: u32 = 2;
const RUP: u32 = 3;
const RMM: u32 = 4;
const DYN: u32 = 7;

/// OP-FP with funct5, fmt, rm/funct3: `rd = f(rs1=1, rs2=2)` always (operands in f1, f2,
/// f3 / x1; the result in f4 or x4).
fn opfp(funct5: u32, fmt: u32, rm: u32, rs2: u32) -> u32 {
    0x53 | (4 << 7) | (rm << 12) | (1 << 15) | (rs2 << 20) | (((funct5 << 2) | fmt) << 25)
}
fn fadd(fmt: u32, rm: u32) -> u32 {
    opfp(0x00, fmt, rm, 2)
}
fn fsub(fmt: u32, rm: u32) -> u32 {
    opfp(0x01, fmt, rm, 2)
}
fn fmul(fmt: u32, rm: u32) -> u32 {
    opfp(0x02, fmt, rm, 2)
}
fn fdiv(fmt: u32, rm: u32) -> u32 {
    opfp(0x03, fmt, rm, 2)
}
fn fsqrt(fmt: u32, rm: u32) -> u32 {
    opfp(0x0b, fmt, rm, 0)
}
/// 0 FSGNJ, 1 FSGNJN, 2 FSGNJX.
fn fsgnj(fmt: u32, k: u32) -> u32 {
    opfp(0x04, fmt, k, 2)
}
fn fmin(fmt: u32) -> u32 {
    opfp(0x05, fmt, 0, 2)
}
fn fmax(fmt: u32) -> u32 {
    opfp(0x05, fmt, 1, 2)
}
/// 2 FEQ, 1 FLT, 0 FLE.
fn fcmp(fmt: u32, k: u32) -> u32 {
    opfp(0x14, fmt, k, 2)
}
/// FCVT.{W,WU,L,LU}.fmt (`int` 0..=3).
fn fcvt_to_int(fmt: u32, int: u32, rm: u32) -> u32 {
    opfp(0x18, fmt, rm, int)
}
/// FCVT.fmt.{W,WU,L,LU}.
fn fcvt_from_int(fmt: u32, int: u32, rm: u32) -> u32 {
    opfp(0x1a, fmt, rm, int)
}
fn fcvt_s_d(rm: u32) -> u32 {
    opfp(0x08, S, rm, 1)
}
fn fcvt_d_s(rm: u32) -> u32 {
    opfp(0x08, D, rm, 0)
}
fn fmv_x(fmt: u32) -> u32 {
    opfp(0x1c, fmt, 0, 0)
}
fn fclass(fmt: u32) -> u32 {
    opfp(0x1c, fmt, 1, 0)
}
fn fmv_from_x(fmt: u32) -> u32 {
    opfp(0x1e, fmt, 0, 0)
}
/// R4: opcode 0x43 FMADD, 0x47 FMSUB, 0x4b FNMSUB, 0x4f FNMADD; f4 = op(f1, f2, f3).
fn r4(opcode: u32, fmt: u32, rm: u32) -> u32 {
    opcode | (4 << 7) | (rm << 12) | (1 << 15) | (2 << 20) | (fmt << 25) | (3 << 27)
}
/// FLW (width 2) / FLD (3): f4 = mem[x1 + imm].
fn fload(width: u32, imm: i32) -> u32 {
    0x07 | (4 << 7) | (width << 12) | (1 << 15) | (((imm as u32) & 0xfff) << 20)
}
/// FSW (2) / FSD (3): mem[x1 + imm] = f2.
fn fstore(width: u32, imm: i32) -> u32 {
    let imm = imm as u32;
    0x27 | ((imm & 0x1f) << 7) | (width << 12) | (1 << 15) | (2 << 20) | ((imm >> 5) << 25)
}
/// csrrs x4, csr, x0 (read).
fn csr_read(c: u16) -> u32 {
    csr_read_to(4, c)
}
/// csrrs rd, csr, x0.
fn csr_read_to(rd: u32, c: u16) -> u32 {
    0x73 | (rd << 7) | (2 << 12) | (u32::from(c) << 20)
}
/// csrrw x0, csr, x1.
fn csr_write(c: u16) -> u32 {
    0x73 | (1 << 12) | (1 << 15) | (u32::from(c) << 20)
}

// ---- values ------------------------------------------------------------------------------

/// NaN-boxes a binary32 bit pattern.
fn b(v: u32) -> u64 {
    0xffff_ffff_0000_0000 | u64::from(v)
}
const ONE_S: u32 = 0x3f80_0000;
const TWO_S: u32 = 0x4000_0000;
const NEG_ONE_S: u32 = 0xbf80_0000;
const PZERO_S: u32 = 0;
const NZERO_S: u32 = 0x8000_0000;
const INF_S: u32 = 0x7f80_0000;
const NINF_S: u32 = 0xff80_0000;
const QNAN_S: u32 = 0x7fc0_0000;
/// A quiet NaN with a payload.
const QNAN_PAYLOAD_S: u32 = 0x7fc1_2345;
/// A signalling NaN (quiet bit clear, payload non-zero).
const SNAN_S: u32 = 0x7f80_0001;
const MIN_NORMAL_S: u32 = 0x0080_0000;
const MAX_S: u32 = 0x7f7f_ffff;
const ONE_D: u64 = 0x3ff0_0000_0000_0000;
const TWO_D: u64 = 0x4000_0000_0000_0000;
const QNAN_D: u64 = 0x7ff8_0000_0000_0000;
const SNAN_D: u64 = 0x7ff0_0000_0000_0001;

// ---- harness -----------------------------------------------------------------------------

/// A machine with FS = Initial, f1..f3 and x1 set, frm = `frm`, `insn` at CODE, run once.
fn run_with(insn: u32, f: [u64; 3], x1: u64, frm: u8, fs: u64) -> Machine {
    let mut m = machine();
    m.hart.sstatus = (m.hart.sstatus & !sstatus::FS) | fs;
    m.hart.fp.f[1..4].copy_from_slice(&f);
    m.hart.x[1] = x1;
    m.hart.fp.frm = frm;
    put(&m, CODE, &[insn]);
    step(&mut m, 1);
    m
}

const FS_INITIAL: u64 = 1 << 13;
const FS_CLEAN: u64 = 2 << 13;

fn exec(insn: u32, f: [u64; 3], x1: u64) -> Machine {
    let m = run_with(insn, f, x1, 0, FS_INITIAL);
    assert_eq!(m.pc(), CODE + 4, "{insn:#010x} must not trap");
    m
}

/// Runs a one-source or two-source binary32 instruction: (f4, fflags).
fn s2(insn: u32, a: u32, bb: u32) -> (u32, u8) {
    let m = exec(insn, [b(a), b(bb), 0], 0);
    let r = m.hart.fp.f[4];
    assert_eq!(r >> 32, 0xffff_ffff, "binary32 results are NaN-boxed");
    (r as u32, m.hart.fp.fflags)
}

/// The same for binary64.
fn d2(insn: u32, a: u64, bb: u64) -> (u64, u8) {
    let m = exec(insn, [a, bb, 0], 0);
    (m.hart.fp.f[4], m.hart.fp.fflags)
}

/// An FP instruction writing x4: (x4, fflags).
fn to_x(insn: u32, f1: u64, f2: u64) -> (u64, u8) {
    let m = exec(insn, [f1, f2, 0], 0);
    (m.hart.x[4], m.hart.fp.fflags)
}

/// Asserts that `insn` traps as illegal.
fn assert_illegal(m: &Machine, insn: u32) {
    assert_eq!(m.pc(), HANDLER, "{insn:#010x} must trap");
    assert_eq!(
        (m.hart.scause, m.hart.stval),
        (cause::ILLEGAL_INSN, u64::from(insn))
    );
}

// ---- tests -------------------------------------------------------------------------------

#[test]
fn decode_knows_every_fp_encoding_and_rejects_reserved_ones() {
    for insn in [
        fadd(S, RNE),
        fadd(D, DYN),
        fsqrt(D, RTZ),
        fsgnj(S, 2),
        fmax(D),
        fcmp(S, 2),
        fcvt_to_int(D, 3, RMM),
        fcvt_from_int(S, 0, RUP),
        fcvt_s_d(RNE),
        fcvt_d_s(RNE),
        fmv_x(D),
        fclass(S),
        fmv_from_x(S),
        r4(0x43, S, RNE),
        r4(0x4f, D, DYN),
    ] {
        assert_eq!(decode(insn).kind, Kind::Fp, "{insn:#010x}");
    }
    assert_eq!(decode(fload(2, -4)).kind, Kind::Flw);
    assert_eq!(decode(fload(3, 8)).imm, 8);
    assert_eq!(decode(fstore(3, -8)).kind, Kind::Fsd);
    assert_eq!(decode(fstore(2, -8)).imm, -8);
    for insn in [
        fadd(S, 5),                // reserved rounding mode
        fmul(D, 6),                // reserved rounding mode
        r4(0x43, 2, RNE),          // fmt H (no Zfh)
        fadd(3, RNE),              // fmt Q
        fsgnj(S, 3),               // reserved funct3
        fmin(S) | (2 << 12),       // reserved funct3
        fcmp(D, 3),                // reserved funct3
        fsqrt(S, RNE) | (1 << 20), // rs2 != 0
        opfp(0x08, S, RNE, 0),     // fcvt.s.s
        opfp(0x08, D, RNE, 1),     // fcvt.d.d
        fcvt_to_int(S, 4, RNE),    // no such integer type
        fmv_x(S) | (1 << 20),      // rs2 != 0
        fmv_from_x(S) | (1 << 12), // funct3 != 0
        fload(1, 0),               // FLH (no Zfh)
        fstore(4, 0),              // FSQ (no Q)
        opfp(0x1f, S, RNE, 0),     // unassigned funct5
    ] {
        assert_eq!(decode(insn).kind, Kind::Illegal, "{insn:#010x}");
    }
    assert_eq!(std::mem::size_of::<crate::decode::Insn>(), 8);
}

#[test]
fn fs_off_makes_every_fp_instruction_and_csr_illegal() {
    for insn in [
        fadd(S, RNE),
        fload(3, 0),
        fstore(2, 0),
        fmv_x(D),
        r4(0x43, D, RNE),
        csr_read(csr::FFLAGS),
        csr_read(csr::FRM),
        csr_read(csr::FCSR),
        csr_write(csr::FCSR),
    ] {
        let m = run_with(insn, [b(ONE_S); 3], DATA, 0, 0);
        assert_illegal(&m, insn);
        assert_eq!(m.hart.fp.f[4], 0, "nothing written");
    }
}

#[test]
fn fp_state_changes_set_fs_dirty_and_sd() {
    // An arithmetic result written to f4: Initial -> Dirty, and SD reads 1.
    let mut m = run_with(fadd(S, RNE), [b(ONE_S); 3], 0, 0, FS_INITIAL);
    assert_eq!(m.hart.sstatus & sstatus::FS, sstatus::FS);
    put(&m, CODE + 4, &[csr_read(hcsr::SSTATUS)]);
    step(&mut m, 1);
    assert_ne!(m.hart.x[4] & sstatus::SD, 0, "SD = (FS == Dirty)");
    assert_eq!(m.hart.x[4] & sstatus::FS, sstatus::FS);

    // Clean stays Clean for what changes no FP state: a store, FMV.X, FCLASS, a quiet
    // comparison without flags, reading fcsr.
    for insn in [
        fstore(3, 0),
        fmv_x(S),
        fclass(D),
        fcmp(S, 2),
        csr_read(csr::FCSR),
    ] {
        let mut m = run_with(insn, [b(ONE_S); 3], DATA, 0, FS_CLEAN);
        assert_eq!(m.pc(), CODE + 4);
        assert_eq!(m.hart.sstatus & sstatus::FS, FS_CLEAN, "{insn:#010x}");
        put(&m, CODE + 4, &[csr_read(hcsr::SSTATUS)]);
        step(&mut m, 1);
        assert_eq!(m.hart.x[4] & sstatus::SD, 0, "SD clear when not Dirty");
    }
    // A comparison that raises NV, a load, a move into f, writing frm: Clean -> Dirty.
    for (insn, f) in [
        (fcmp(S, 1), b(QNAN_S)),
        (fload(2, 0), 0),
        (fmv_from_x(D), 0),
        (csr_write(csr::FRM), 0),
    ] {
        let m = run_with(insn, [f; 3], DATA, 0, FS_CLEAN);
        assert_eq!(m.pc(), CODE + 4);
        assert_eq!(m.hart.sstatus & sstatus::FS, sstatus::FS, "{insn:#010x}");
    }
}

#[test]
fn sstatus_fs_is_writable() {
    let mut m = machine();
    m.hart.x[1] = 2 << 13;
    put(
        &m,
        CODE,
        &[
            0x73 | (1 << 12) | (1 << 15) | (u32::from(hcsr::SSTATUS) << 20),
            csr_read(hcsr::SSTATUS),
        ],
    );
    step(&mut m, 2);
    assert_eq!(m.hart.x[4] & (sstatus::FS | sstatus::SD), 2 << 13);
}

#[test]
fn fcsr_fflags_and_frm_alias_one_register() {
    let mut m = run_with(csr_write(csr::FCSR), [0; 3], 0xffff_ff75, 0, FS_INITIAL);
    // fcsr bits 31:8 are reserved: fflags = 0x15, frm = 3.
    assert_eq!((m.hart.fp.fflags, m.hart.fp.frm), (0x15, 3));
    put(
        &m,
        CODE + 4,
        &[
            csr_read_to(5, csr::FFLAGS),
            csr_read_to(6, csr::FRM),
            csr_read(csr::FCSR),
        ],
    );
    step(&mut m, 3);
    assert_eq!((m.hart.x[5], m.hart.x[6], m.hart.x[4]), (0x15, 3, 0x75));
}

#[test]
fn rounding_mode_reserved_or_bad_frm_is_illegal() {
    // DYN with frm 5, 6, 7: illegal.
    for frm in 5..=7 {
        let insn = fadd(S, DYN);
        let m = run_with(insn, [b(ONE_S); 3], 0, frm, FS_INITIAL);
        assert_illegal(&m, insn);
    }
    // A static rm of 5 is illegal whatever frm is; so is FCVT.D.S (exact) with rm 6.
    for insn in [fadd(D, 5), fcvt_d_s(6)] {
        let m = run_with(insn, [ONE_D; 3], 0, 0, FS_INITIAL);
        assert_illegal(&m, insn);
    }
    // DYN follows frm: 1 + 2^-24 is a tie, RTZ and RNE give 1.0, RUP gives 1 + 2^-23.
    let m = run_with(
        fadd(S, DYN),
        [b(ONE_S), b(0x3380_0000), 0],
        0,
        3,
        FS_INITIAL,
    );
    assert_eq!(m.hart.fp.f[4], b(0x3f80_0001));
}

#[test]
fn nan_boxing() {
    // A binary32 operand whose upper half is not all ones is the canonical NaN: 1.0 + it
    // is the canonical NaN and raises nothing (the canonical NaN is quiet).
    let m = exec(fadd(S, RNE), [0x0000_0000_3f80_0000, b(ONE_S), 0], 0);
    assert_eq!((m.hart.fp.f[4], m.hart.fp.fflags), (b(QNAN_S), 0));
    // FSGNJ of an improperly boxed value works on the canonical NaN, sign from rs2.
    let m = exec(fsgnj(S, 1), [0x1234_5678_3f80_0000, b(ONE_S), 0], 0);
    assert_eq!(m.hart.fp.f[4], b(0xffc0_0000));
    // Transfers ignore the boxing: FMV.X.W and FSW move the low 32 bits (FMV.X.W
    // sign-extends them).
    let (x, _) = to_x(fmv_x(S), 0x0000_0000_bf80_0000, 0);
    assert_eq!(x, 0xffff_ffff_bf80_0000);
    let mut m = run_with(
        fstore(2, 0),
        [0, 0x0123_4567_89ab_cdef, 0],
        DATA,
        0,
        FS_INITIAL,
    );
    assert_eq!(crate::tests::get_u64(&m, DATA) & 0xffff_ffff, 0x89ab_cdef);
    // FLW and FMV.W.X NaN-box what they write.
    crate::tests::put_u64(&m, DATA + 8, 0x4000_0000_7f80_0001);
    m.hart.x[1] = DATA;
    put(&m, CODE + 4, &[fload(2, 8)]);
    step(&mut m, 1);
    assert_eq!(m.hart.fp.f[4], b(0x7f80_0001), "the payload is kept");
    let m = exec(fmv_from_x(S), [0; 3], 0xdead_beef_3f80_0000);
    assert_eq!(m.hart.fp.f[4], b(ONE_S));
    // FLD / FSD / FMV.D.X / FMV.X.D move all 64 bits.
    let mut m = run_with(fload(3, 0), [0, SNAN_D, 0], DATA, 0, FS_INITIAL);
    put(&m, CODE + 4, &[fstore(3, 16)]);
    step(&mut m, 1);
    assert_eq!(crate::tests::get_u64(&m, DATA + 16), SNAN_D);
    let (x, _) = to_x(fmv_x(D), SNAN_D, 0);
    assert_eq!(x, SNAN_D);
}

#[test]
fn nan_results_are_canonical_and_signalling_inputs_raise_nv() {
    // A quiet NaN's payload is not propagated (§11.3); no flag for a quiet input.
    assert_eq!(s2(fadd(S, RNE), QNAN_PAYLOAD_S, ONE_S), (QNAN_S, 0));
    assert_eq!(s2(fmul(S, RNE), ONE_S, 0xffc0_0001), (QNAN_S, 0));
    // A signalling NaN raises NV.
    assert_eq!(s2(fadd(S, RNE), SNAN_S, ONE_S), (QNAN_S, NV));
    assert_eq!(d2(fmul(D, RNE), SNAN_D, TWO_D), (QNAN_D, NV));
    assert_eq!(d2(fsqrt(D, RNE), SNAN_D, 0), (QNAN_D, NV));
    // Invalid operations: inf - inf, 0 * inf, 0 / 0, sqrt(-1).
    assert_eq!(s2(fsub(S, RNE), INF_S, INF_S), (QNAN_S, NV));
    assert_eq!(s2(fmul(S, RNE), PZERO_S, NINF_S), (QNAN_S, NV));
    assert_eq!(s2(fdiv(S, RNE), PZERO_S, NZERO_S), (QNAN_S, NV));
    assert_eq!(s2(fsqrt(S, RNE), NEG_ONE_S, 0), (QNAN_S, NV));
    // Conversions between formats: canonical NaN; signalling raises NV.
    assert_eq!(d2(fcvt_d_s(RNE), b(SNAN_S), 0), (QNAN_D, NV));
    assert_eq!(d2(fcvt_d_s(RNE), b(QNAN_PAYLOAD_S), 0), (QNAN_D, 0));
    let m = exec(fcvt_s_d(RNE), [0xfff8_0000_dead_beef, 0, 0], 0);
    assert_eq!((m.hart.fp.f[4], m.hart.fp.fflags), (b(QNAN_S), 0));
    // Sign injection does not canonicalise: the payload survives, only the sign changes.
    assert_eq!(s2(fsgnj(S, 1), QNAN_PAYLOAD_S, ONE_S), (0xffc1_2345, 0));
    assert_eq!(s2(fsgnj(S, 2), SNAN_S, NEG_ONE_S), (0xff80_0001, 0));
}

#[test]
fn signed_zero() {
    // x + (-x) is +0 in every mode but RDN, where it is -0 (IEEE 754 §6.3).
    for (rm, want) in [
        (RNE, PZERO_S),
        (RTZ, PZERO_S),
        (RDN, NZERO_S),
        (RUP, PZERO_S),
        (RMM, PZERO_S),
    ] {
        assert_eq!(s2(fadd(S, rm), NZERO_S, PZERO_S), (want, 0), "rm {rm}");
        assert_eq!(s2(fsub(S, rm), ONE_S, ONE_S), (want, 0), "rm {rm}");
    }
    // -0 + -0 = -0 in every mode.
    assert_eq!(s2(fadd(S, RUP), NZERO_S, NZERO_S), (NZERO_S, 0));
    // sqrt(-0) = -0 (IEEE 754 §5.4.1), no flag.
    assert_eq!(s2(fsqrt(S, RNE), NZERO_S, 0), (NZERO_S, 0));
    // Sign injection on zeros.
    assert_eq!(s2(fsgnj(S, 0), PZERO_S, NEG_ONE_S), (NZERO_S, 0));
    assert_eq!(s2(fsgnj(S, 1), NZERO_S, NEG_ONE_S), (PZERO_S, 0));
    assert_eq!(s2(fsgnj(S, 2), NZERO_S, NEG_ONE_S), (PZERO_S, 0));
    // -0 == +0, and -0 <= +0 but not <.
    assert_eq!(to_x(fcmp(S, 2), b(NZERO_S), b(PZERO_S)), (1, 0));
    assert_eq!(to_x(fcmp(S, 1), b(NZERO_S), b(PZERO_S)), (0, 0));
    assert_eq!(to_x(fcmp(S, 0), b(PZERO_S), b(NZERO_S)), (1, 0));
}

#[test]
fn subnormals_and_underflow_with_tininess_after_rounding() {
    // Subnormal inputs and an exact subnormal result: no UF (UF needs inexact).
    assert_eq!(s2(fadd(S, RNE), 0x0000_0001, 0x0000_0001), (0x0000_0002, 0));
    assert_eq!(
        s2(fmul(S, RNE), MIN_NORMAL_S, 0x3f00_0000),
        (0x0040_0000, 0)
    );
    // (2^-126 + 2^-149) * 0.5 = 2^-127 + 2^-150: half a subnormal step. RNE ties to the even
    // 0x00400000, RUP goes up; both tiny and inexact: UF | NX.
    assert_eq!(
        s2(fmul(S, RNE), 0x0080_0001, 0x3f00_0000),
        (0x0040_0000, UF | NX)
    );
    assert_eq!(
        s2(fmul(S, RUP), 0x0080_0001, 0x3f00_0000),
        (0x0040_0001, UF | NX)
    );
    // (1 - 2^-24) * 2^-126 = 2^-126 - 2^-150 is exact with 24 bits and unbounded exponent, so
    // tiny after rounding; on the subnormal grid it is a tie that rounds to 2^-126 (even).
    // RISC-V detects tininess after rounding: UF | NX with a normal result.
    assert_eq!(
        s2(fmul(S, RNE), 0x3f7f_ffff, MIN_NORMAL_S),
        (MIN_NORMAL_S, UF | NX)
    );
    // (1 - 2^-23) * (1 + 2^-23) * 2^-126 = 2^-126 (1 - 2^-46) rounds to 2^-126 even with an
    // unbounded exponent: not tiny, NX only. RTZ keeps it below 2^-126: tiny, UF | NX.
    assert_eq!(
        s2(fmul(S, RNE), 0x3f7f_fffe, 0x0080_0001),
        (MIN_NORMAL_S, NX)
    );
    assert_eq!(
        s2(fmul(S, RTZ), 0x3f7f_fffe, 0x0080_0001),
        (0x007f_ffff, UF | NX)
    );
    // The same tininess rule in a narrowing conversion: (1 - 2^-24) * 2^-126 as a double.
    let m = exec(fcvt_s_d(RNE), [0x380f_ffff_e000_0000, 0, 0], 0);
    assert_eq!(
        (m.hart.fp.f[4], m.hart.fp.fflags),
        (b(MIN_NORMAL_S), UF | NX)
    );
    // Underflow to zero: 2^-149 * 0.25 in RNE is 0 (below half the step), UF | NX.
    assert_eq!(s2(fmul(S, RNE), 0x0000_0001, 0x3e80_0000), (0, UF | NX));
    // D: 2^-1074 (smallest subnormal) / 2 is a tie between 0 and 2^-1074: RNE gives 0.
    assert_eq!(d2(fdiv(D, RNE), 1, TWO_D), (0, UF | NX));
    assert_eq!(d2(fdiv(D, RUP), 1, TWO_D), (1, UF | NX));
    // Square roots of subnormals are normal: sqrt(2^-149) = 2^-75 * sqrt(2), inexact;
    // sqrt(2^-1074) = 2^-537 exactly.
    assert_eq!(s2(fsqrt(S, RNE), 0x0000_0001, 0), (0x1a35_04f3, NX));
    assert_eq!(d2(fsqrt(D, RNE), 1, 0), (0x1e60_0000_0000_0000, 0));
}

#[test]
fn each_rounding_mode_on_a_tie_and_a_non_tie() {
    const TIE: u32 = 0x3380_0000; // 2^-24: 1 + 2^-24 is halfway between 1 and 1 + 2^-23
    const ABOVE: u32 = 0x33c0_0000; // 1.5 * 2^-24: above the halfway point
    const UP: u32 = 0x3f80_0001;
    for (rm, tie, neg_tie, above) in [
        (RNE, ONE_S, NEG_ONE_S, UP),
        (RTZ, ONE_S, NEG_ONE_S, ONE_S),
        (RDN, ONE_S, 0xbf80_0001, ONE_S),
        (RUP, UP, NEG_ONE_S, UP),
        (RMM, UP, 0xbf80_0001, UP),
    ] {
        assert_eq!(s2(fadd(S, rm), ONE_S, TIE), (tie, NX), "rm {rm}");
        assert_eq!(s2(fsub(S, rm), NEG_ONE_S, TIE), (neg_tie, NX), "rm {rm}");
        assert_eq!(s2(fadd(S, rm), ONE_S, ABOVE), (above, NX), "rm {rm}");
    }
    // Integer conversions: 2.5 and -2.5 are ties, 2.25 is not.
    for (rm, p, n, q) in [
        (RNE, 2, -2, 2),
        (RTZ, 2, -2, 2),
        (RDN, 2, -3, 2),
        (RUP, 3, -2, 3),
        (RMM, 3, -3, 2),
    ] {
        let w = |v: u32| to_x(fcvt_to_int(S, 0, rm), b(v), 0);
        assert_eq!(w(0x4020_0000), (p as u64, NX), "rm {rm}");
        assert_eq!(w(0xc020_0000), (n as i64 as u64, NX), "rm {rm}");
        assert_eq!(w(0x4010_0000), (q as u64, NX), "rm {rm}");
    }
    // 2^24 + 1 is a tie between 2^24 and 2^24 + 2 in binary32.
    let m = exec(fcvt_from_int(S, 0, RNE), [0; 3], 16_777_217);
    assert_eq!((m.hart.fp.f[4], m.hart.fp.fflags), (b(0x4b80_0000), NX));
    let m = exec(fcvt_from_int(S, 0, RUP), [0; 3], 16_777_217);
    assert_eq!((m.hart.fp.f[4], m.hart.fp.fflags), (b(0x4b80_0001), NX));
    // D: 1/3 rounds down in RNE, up in RUP.
    let third = 0x4008_0000_0000_0000; // 3.0
    assert_eq!(d2(fdiv(D, RNE), ONE_D, third), (0x3fd5_5555_5555_5555, NX));
    assert_eq!(d2(fdiv(D, RUP), ONE_D, third), (0x3fd5_5555_5555_5556, NX));
}

#[test]
fn overflow_division_by_zero_and_inexact() {
    assert_eq!(s2(fdiv(S, RNE), ONE_S, PZERO_S), (INF_S, DZ));
    assert_eq!(s2(fdiv(S, RNE), NEG_ONE_S, PZERO_S), (NINF_S, DZ));
    // inf / 0 is inf without DZ (the dividend is not finite).
    assert_eq!(s2(fdiv(S, RNE), INF_S, PZERO_S), (INF_S, 0));
    assert_eq!(s2(fdiv(S, RNE), ONE_S, 0x4040_0000), (0x3eaa_aaab, NX));
    assert_eq!(s2(fdiv(S, RTZ), ONE_S, 0x4040_0000), (0x3eaa_aaaa, NX));
    // Overflow: to infinity in RNE, to the largest finite value in RTZ (IEEE 754 §7.4).
    assert_eq!(s2(fmul(S, RNE), MAX_S, TWO_S), (INF_S, OF | NX));
    assert_eq!(s2(fmul(S, RTZ), MAX_S, TWO_S), (MAX_S, OF | NX));
    // Negative overflow: RUP goes towards +inf, so to -MAX; RDN to -inf.
    assert_eq!(s2(fmul(S, RUP), 0xff7f_ffff, TWO_S), (0xff7f_ffff, OF | NX));
    assert_eq!(s2(fmul(S, RDN), 0xff7f_ffff, TWO_S), (NINF_S, OF | NX));
    assert_eq!(s2(fmul(S, RDN), MAX_S, TWO_S), (MAX_S, OF | NX));
    // MAX + 1 is inexact but no overflow: the exact sum rounds to MAX (RNE).
    assert_eq!(s2(fadd(S, RNE), MAX_S, ONE_S), (MAX_S, NX));
    assert_eq!(s2(fadd(S, RTZ), MAX_S, ONE_S), (MAX_S, NX));
    let m = exec(fcvt_s_d(RNE), [0x7e37_e43c_8800_759c, 0, 0], 0); // 1e300
    assert_eq!((m.hart.fp.f[4], m.hart.fp.fflags), (b(INF_S), OF | NX));
    // Flags accrue: a second instruction adds to fflags.
    let mut m = exec(fdiv(S, RNE), [b(ONE_S), b(PZERO_S), 0], 0);
    put(&m, CODE + 4, &[fmul(S, RNE)]);
    m.hart.fp.f[1] = b(MAX_S);
    m.hart.fp.f[2] = b(TWO_S);
    step(&mut m, 1);
    assert_eq!(m.hart.fp.fflags, DZ | OF | NX);
}

#[test]
fn square_root() {
    assert_eq!(s2(fsqrt(S, RNE), 0x4080_0000, 0), (TWO_S, 0));
    // sqrt(2) = 1.41421356237...: 0x3fb504f3 is below it and nearer, 0x3fb504f4 above.
    assert_eq!(s2(fsqrt(S, RNE), TWO_S, 0), (0x3fb5_04f3, NX));
    assert_eq!(s2(fsqrt(S, RUP), TWO_S, 0), (0x3fb5_04f4, NX));
    assert_eq!(d2(fsqrt(D, RNE), TWO_D, 0), (0x3ff6_a09e_667f_3bcd, NX));
    assert_eq!(s2(fsqrt(S, RNE), INF_S, 0), (INF_S, 0));
    assert_eq!(s2(fsqrt(S, RNE), NINF_S, 0), (QNAN_S, NV));
    // The largest binary64 value: sqrt is exact? No: 2^512 * sqrt(2 - 2^-52), inexact.
    let (r, fl) = d2(fsqrt(D, RTZ), 0x7fef_ffff_ffff_ffff, 0);
    assert_eq!((r, fl), (0x5fef_ffff_ffff_ffff, NX));
}

#[test]
fn fused_multiply_add_rounds_once() {
    // a = b = 1 + 2^-23; a*b = 1 + 2^-22 + 2^-46 exactly. With c = -(1 + 2^-22) the fused
    // result is 2^-46 exactly; rounding the product first would give 0.
    let a = b(0x3f80_0001);
    let c_neg = b(0xbf80_0002);
    let c_pos = b(0x3f80_0002);
    let r4s = |op: u32, c: u64| {
        let m = exec(r4(op, S, RNE), [a, a, c], 0);
        (m.hart.fp.f[4], m.hart.fp.fflags)
    };
    assert_eq!(r4s(0x43, c_neg), (b(0x2880_0000), 0), "fmadd: a*b + c");
    assert_eq!(r4s(0x47, c_pos), (b(0x2880_0000), 0), "fmsub: a*b - c");
    assert_eq!(r4s(0x4b, c_pos), (b(0xa880_0000), 0), "fnmsub: -(a*b) + c");
    assert_eq!(r4s(0x4f, c_neg), (b(0xa880_0000), 0), "fnmadd: -(a*b) - c");
    // The unfused sequence loses it: fmul rounds (NX), fadd gives +0.
    let mut m = exec(fmul(S, RNE), [a, a, 0], 0);
    assert_eq!(m.hart.fp.f[4], b(0x3f80_0002));
    m.hart.fp.f[1] = m.hart.fp.f[4];
    m.hart.fp.f[2] = c_neg;
    put(&m, CODE + 4, &[fadd(S, RNE)]);
    step(&mut m, 1);
    assert_eq!((m.hart.fp.f[4], m.hart.fp.fflags), (b(PZERO_S), NX));
    // inf * 0 + qNaN raises NV on RISC-V (§11.6), result canonical.
    let m = exec(
        r4(0x43, S, RNE),
        [b(INF_S), b(PZERO_S), b(QNAN_PAYLOAD_S)],
        0,
    );
    assert_eq!((m.hart.fp.f[4], m.hart.fp.fflags), (b(QNAN_S), NV));
    // D, rounding in the addition only once: 1 * 1 + 2^-53 is a tie, RNE keeps 1.
    let m = exec(r4(0x43, D, RNE), [ONE_D, ONE_D, 0x3ca0_0000_0000_0000], 0);
    assert_eq!((m.hart.fp.f[4], m.hart.fp.fflags), (ONE_D, NX));
    let m = exec(r4(0x43, D, RUP), [ONE_D, ONE_D, 0x3ca0_0000_0000_0000], 0);
    assert_eq!((m.hart.fp.f[4], m.hart.fp.fflags), (ONE_D + 1, NX));
}

#[test]
fn fmin_fmax_with_nans_and_zeros() {
    // minimumNumber/maximumNumber: a NaN operand gives the other; sNaN raises NV.
    assert_eq!(s2(fmin(S), QNAN_S, ONE_S), (ONE_S, 0));
    assert_eq!(s2(fmax(S), ONE_S, QNAN_PAYLOAD_S), (ONE_S, 0));
    assert_eq!(s2(fmin(S), SNAN_S, ONE_S), (ONE_S, NV));
    assert_eq!(s2(fmax(S), NEG_ONE_S, SNAN_S), (NEG_ONE_S, NV));
    // Both NaN: the canonical NaN.
    assert_eq!(s2(fmax(S), QNAN_PAYLOAD_S, QNAN_PAYLOAD_S), (QNAN_S, 0));
    assert_eq!(s2(fmin(S), SNAN_S, QNAN_S), (QNAN_S, NV));
    // -0 < +0, in either operand order.
    assert_eq!(s2(fmin(S), PZERO_S, NZERO_S), (NZERO_S, 0));
    assert_eq!(s2(fmin(S), NZERO_S, PZERO_S), (NZERO_S, 0));
    assert_eq!(s2(fmax(S), NZERO_S, PZERO_S), (PZERO_S, 0));
    assert_eq!(s2(fmax(S), PZERO_S, NZERO_S), (PZERO_S, 0));
    assert_eq!(s2(fmax(S), NINF_S, NEG_ONE_S), (NEG_ONE_S, 0));
    assert_eq!(d2(fmin(D), SNAN_D, TWO_D), (TWO_D, NV));
    assert_eq!(d2(fmax(D), QNAN_D, SNAN_D), (QNAN_D, NV));
}

#[test]
fn comparisons_signal_as_specified() {
    // FEQ is quiet: NV only for a signalling NaN. FLT and FLE signal on any NaN.
    assert_eq!(to_x(fcmp(S, 2), b(QNAN_S), b(ONE_S)), (0, 0));
    assert_eq!(to_x(fcmp(S, 2), b(SNAN_S), b(ONE_S)), (0, NV));
    assert_eq!(to_x(fcmp(S, 1), b(QNAN_S), b(ONE_S)), (0, NV));
    assert_eq!(to_x(fcmp(S, 0), b(ONE_S), b(QNAN_S)), (0, NV));
    assert_eq!(to_x(fcmp(S, 1), b(NEG_ONE_S), b(ONE_S)), (1, 0));
    assert_eq!(to_x(fcmp(S, 1), b(ONE_S), b(ONE_S)), (0, 0));
    assert_eq!(to_x(fcmp(S, 0), b(ONE_S), b(ONE_S)), (1, 0));
    assert_eq!(to_x(fcmp(D, 2), TWO_D, TWO_D), (1, 0));
    assert_eq!(to_x(fcmp(D, 1), ONE_D, TWO_D), (1, 0));
    // An improperly boxed binary32 operand is the canonical (quiet) NaN.
    assert_eq!(to_x(fcmp(S, 2), ONE_D, ONE_D), (0, 0));
}

#[test]
fn fclass_sets_one_bit_per_class() {
    for (v, bit) in [
        (NINF_S, 0),
        (NEG_ONE_S, 1),
        (0x8000_0001, 2),
        (NZERO_S, 3),
        (PZERO_S, 4),
        (0x0000_0001, 5),
        (ONE_S, 6),
        (INF_S, 7),
        (SNAN_S, 8),
        (QNAN_S, 9),
    ] {
        assert_eq!(to_x(fclass(S), b(v), 0), (1 << bit, 0), "{v:#x}");
    }
    assert_eq!(to_x(fclass(D), SNAN_D, 0), (1 << 8, 0));
    assert_eq!(to_x(fclass(D), 0x000f_ffff_ffff_ffff, 0), (1 << 5, 0));
    // An improperly boxed binary32 value classifies as the canonical (quiet) NaN.
    assert_eq!(to_x(fclass(S), ONE_D, 0), (1 << 9, 0));
}

#[test]
fn float_to_integer_saturates_and_raises_nv() {
    // (fmt, integer type, operand, result, flags); Table 11.4 of the F chapter.
    let max_w = 0x7fff_ffffu64;
    let min_w = 0xffff_ffff_8000_0000u64;
    for (fmt, int, f, want, fl) in [
        (S, 0, b(QNAN_S), max_w, NV),
        (S, 0, b(SNAN_S), max_w, NV),
        (S, 0, b(NINF_S), min_w, NV),
        (S, 0, b(INF_S), max_w, NV),
        (S, 0, b(0x4f32_d05e), max_w, NV),                  // 3e9
        (S, 0, b(0xcf00_0000), min_w, 0),                   // -2^31 fits
        (S, 1, b(NEG_ONE_S), 0, NV),                        // negative to unsigned
        (S, 1, b(0xbf00_0000), 0, NX),                      // -0.5 rounds (RTZ) to 0: in range
        (S, 1, b(QNAN_S), u64::MAX, NV),                    // 2^32 - 1, sign-extended
        (S, 1, b(0x4f6e_6b28), 0xffff_ffff_ee6b_2800, 0),   // 4e9, sign-extended
        (D, 2, 0x43e0_0000_0000_0000, i64::MAX as u64, NV), // 2^63
        (D, 2, 0xc3e0_0000_0000_0000, i64::MIN as u64, 0),  // -2^63 fits
        (D, 3, QNAN_D, u64::MAX, NV),
        (D, 3, 0xc000_0000_0000_0000, 0, NV), // -2.0
        (D, 3, 0x43ef_ffff_ffff_ffff, 0xffff_ffff_ffff_f800, 0),
        (D, 3, 0x43f0_0000_0000_0000, u64::MAX, NV), // 2^64
        (D, 0, 0x8000_0000_0000_0000, 0, 0),         // -0.0: exact
        (D, 0, 0x41e0_0000_0000_0000, max_w, NV),    // 2^31
    ] {
        let r = to_x(fcvt_to_int(fmt, int, RTZ), f, 0);
        assert_eq!(r, (want, fl), "fmt {fmt} int {int} value {f:#x}");
    }
}

#[test]
fn integer_to_float() {
    // W takes the low 32 bits as signed, WU as unsigned.
    let m = exec(fcvt_from_int(S, 0, RNE), [0; 3], 0x1234_5678_ffff_ffff);
    assert_eq!((m.hart.fp.f[4], m.hart.fp.fflags), (b(NEG_ONE_S), 0));
    // 2^32 - 1 needs 32 bits: rounds to 2^32 in binary32, exact in binary64.
    let m = exec(fcvt_from_int(S, 1, RNE), [0; 3], u64::MAX);
    assert_eq!((m.hart.fp.f[4], m.hart.fp.fflags), (b(0x4f80_0000), NX));
    let m = exec(fcvt_from_int(D, 1, RNE), [0; 3], u64::MAX);
    assert_eq!(
        (m.hart.fp.f[4], m.hart.fp.fflags),
        (0x41ef_ffff_ffe0_0000, 0)
    );
    let m = exec(fcvt_from_int(D, 2, RNE), [0; 3], i64::MIN as u64);
    assert_eq!(
        (m.hart.fp.f[4], m.hart.fp.fflags),
        (0xc3e0_0000_0000_0000, 0)
    );
    // 2^64 - 1 as LU: rounds to 2^64 (RNE), down to 2^64 - 2^11 in RTZ.
    let m = exec(fcvt_from_int(D, 3, RTZ), [0; 3], u64::MAX);
    assert_eq!(
        (m.hart.fp.f[4], m.hart.fp.fflags),
        (0x43ef_ffff_ffff_ffff, NX)
    );
    // Zero is +0.
    let m = exec(fcvt_from_int(S, 2, RDN), [0; 3], 0);
    assert_eq!(m.hart.fp.f[4], b(PZERO_S));
}

#[test]
fn single_double_conversions() {
    // Widening is exact.
    assert_eq!(
        d2(fcvt_d_s(RNE), b(0x3eaa_aaab), 0),
        (0x3fd5_5555_6000_0000, 0)
    );
    assert_eq!(d2(fcvt_d_s(RNE), b(NZERO_S), 0), (0x8000_0000_0000_0000, 0));
    // Narrowing rounds: 1 + 2^-24 is a tie.
    let tie = 0x3ff0_0000_1000_0000;
    let m = exec(fcvt_s_d(RNE), [tie, 0, 0], 0);
    assert_eq!((m.hart.fp.f[4], m.hart.fp.fflags), (b(ONE_S), NX));
    let m = exec(fcvt_s_d(RUP), [tie, 0, 0], 0);
    assert_eq!((m.hart.fp.f[4], m.hart.fp.fflags), (b(0x3f80_0001), NX));
    // D operands are read whole (no unboxing): -1.0 as a double.
    let m = exec(fcvt_s_d(RNE), [0xbff0_0000_0000_0000, 0, 0], 0);
    assert_eq!(m.hart.fp.f[4], b(NEG_ONE_S));
}

#[test]
fn compressed_fp_loads_and_stores() {
    // c.fsdsp f2, 16(sp) then c.fldsp f4, 16(sp) (RVC quadrant 2), one word holding both.
    let code = 0xa80a | (0x2242 << 16);
    let mut m = machine();
    m.hart.sstatus |= FS_INITIAL;
    m.hart.x[2] = DATA;
    m.hart.fp.f[2] = SNAN_D;
    put(&m, CODE, &[code]);
    step(&mut m, 2);
    assert_eq!(m.pc(), CODE + 4);
    assert_eq!(crate::tests::get_u64(&m, DATA + 16), SNAN_D);
    assert_eq!(m.hart.fp.f[4], SNAN_D);
    // With FS = Off the compressed form is illegal too.
    let mut m = machine();
    put(&m, CODE, &[code]);
    step(&mut m, 1);
    assert_eq!(m.pc(), HANDLER);
    assert_eq!(m.hart.scause, cause::ILLEGAL_INSN);
}

/// Hostile input: random words in the FP opcode space (every funct/fmt/rm/register
/// combination, reserved ones included) on random register contents and `frm` values. Each
/// one either executes or raises illegal-instruction (or a fault for a load/store); none
/// panics, and only FP-capable encodings leave the pc past the instruction.
#[test]
fn random_fp_encodings_never_panic() {
    let mut st = 0x243f_6a88_85a3_08d3u64;
    let mut rng = move || {
        st ^= st >> 12;
        st ^= st << 25;
        st ^= st >> 27;
        st.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let opcodes = [0x07, 0x27, 0x43, 0x47, 0x4b, 0x4f, 0x53];
    let mut m = machine();
    let (mut executed, mut illegal) = (0, 0);
    for n in 0..20_000 {
        let r = rng();
        let insn = (r as u32 & !0x7f) | opcodes[(r >> 32) as usize % opcodes.len()];
        m.hart.sstatus = (m.hart.sstatus & !sstatus::FS) | (((r >> 40) & 3) << 13);
        m.hart.fp.frm = ((r >> 44) & 7) as u8;
        for i in 0..32 {
            // Mostly NaN-boxed binary32 values, sometimes any 64 bits.
            let v = rng();
            m.hart.fp.f[i] = if v & 3 == 0 {
                v
            } else {
                v | (0xffff_ffff << 32)
            };
            m.hart.x[i] = if i == 0 {
                0
            } else if v & 4 == 0 {
                DATA + (v >> 52)
            } else {
                v
            };
        }
        m.set_pc(CODE);
        put(&m, CODE, &[insn]);
        step(&mut m, 1);
        if m.pc() == CODE + 4 {
            executed += 1;
            assert!(decode(insn).kind != Kind::Illegal, "{insn:#010x}");
        } else {
            assert_eq!(m.pc(), HANDLER, "{n}: {insn:#010x}");
            illegal += u32::from(m.hart.scause == cause::ILLEGAL_INSN);
        }
    }
    // Both outcomes are exercised.
    assert!(executed > 2_000 && illegal > 2_000, "{executed} {illegal}");
}

/// Throughput of an FP loop (fmadd.d, fdiv.d, fcvt.w.d, fsgnj, branch), next to the integer
/// `mips_loop`; run with `cargo test --release -- --ignored --nocapture mips`.
#[test]
#[ignore = "benchmark; run in release with --nocapture"]
fn fp_mips_loop() {
    let mut m = crate::Machine::new(crate::MachineConfig {
        ram_size: 4 << 20,
        console: Box::new(std::io::sink()),
        instruction_limit: Some(50_000_000),
        ..Default::default()
    })
    .unwrap();
    m.hart.sstatus |= FS_INITIAL;
    m.hart.fp.f[1] = ONE_D;
    m.hart.fp.f[2] = 0x3ff0_0000_0000_0001;
    m.hart.fp.f[3] = 0x3fe0_0000_0000_0000;
    let fmadd_d = 0x43 | (1 << 7) | (1 << 15) | (2 << 20) | (1 << 25) | (3 << 27); // f1 = f1*f2 + f3
    let fdiv_d = 0x53 | (5 << 7) | (1 << 15) | (2 << 20) | (0x0d << 25); // f5 = f1 / f2
    let fcvt_w_d = 0x53 | (6 << 7) | (1 << 12) | (5 << 15) | (0x61 << 25); // x6 = (int) f5
    let fsgnjx_d = 0x53 | (7 << 7) | (2 << 12) | (1 << 15) | (3 << 20) | (0x11 << 25);
    let jal_back = crate::decode::asm::jal(0, -16);
    put(&m, CODE, &[fmadd_d, fdiv_d, fcvt_w_d, fsgnjx_d, jal_back]);
    let t = std::time::Instant::now();
    assert_eq!(m.run().unwrap(), crate::ExitReason::InstructionLimit);
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{:.1} MIPS (4 of 5 instructions FP)",
        m.instructions_retired() as f64 / secs / 1e6
    );
}

#[test]
fn with_nx_accrued_results_and_flags_are_unchanged() {
    // Once NX is set the hart may take the host-FPU path; everything it must not answer
    // still comes out as without it.
    let with_nx = |insn: u32, f: [u64; 3]| {
        let mut m = machine();
        m.hart.sstatus |= FS_INITIAL;
        m.hart.fp.f[1..4].copy_from_slice(&f);
        m.hart.fp.fflags = NX;
        put(&m, CODE, &[insn]);
        step(&mut m, 1);
        assert_eq!(m.pc(), CODE + 4);
        (m.hart.fp.f[4], m.hart.fp.fflags)
    };
    let nx = |(v, fl): (u32, u8)| (b(v), fl | NX);
    for (insn, a, bb) in [
        (fmul(S, RNE), 0x3f7f_ffff, MIN_NORMAL_S), // tiny after rounding: UF
        (fmul(S, RNE), MAX_S, TWO_S),              // overflow: OF
        (fdiv(S, RNE), ONE_S, PZERO_S),            // DZ
        (fdiv(S, RNE), ONE_S, 0x4040_0000),        // plain inexact
        (fsub(S, RNE), ONE_S, ONE_S),              // exact +0
        (fadd(S, RNE), SNAN_S, ONE_S),             // NV
        (fsqrt(S, RNE), NEG_ONE_S, 0),             // NV
        (fadd(S, RNE), 0x0000_0001, 0x0000_0001),  // subnormals
    ] {
        let without = s2(insn, a, bb);
        assert_eq!(
            with_nx(insn, [b(a), b(bb), 0]),
            nx(without),
            "{insn:#x} {a:#x} {bb:#x}"
        );
    }
    let m = exec(r4(0x43, D, RNE), [ONE_D, TWO_D, ONE_D], 0);
    let want = (m.hart.fp.f[4], m.hart.fp.fflags | NX);
    assert_eq!(with_nx(r4(0x43, D, RNE), [ONE_D, TWO_D, ONE_D]), want);
    assert_eq!(want.0, 0x4008_0000_0000_0000, "1 * 2 + 1 = 3");
}
