//! The C extension: each 16-bit instruction expanded into the 32-bit instruction it stands
//! for (RISC-V Unprivileged ISA 20191213, chapter 16 "C" Standard Extension for Compressed
//! Instructions, Tables 16.5-16.7 for RV64C), so that one decoder and one interpreter serve
//! both lengths.
//!
//! Reserved encodings expand to `None`: the all-zero halfword, C.ADDI4SPN with nzuimm = 0,
//! C.ADDIW / C.LWSP / C.LDSP with rd = x0, C.ADDI16SP / C.LUI with a zero immediate, C.JR
//! with rs1 = x0, quadrant 0 funct3 100 and the two reserved C.SUBW/C.ADDW neighbours.
//! HINTs (C.NOP with an immediate, C.ADDI/C.LI/C.LUI/C.MV/C.ADD/C.SLLI with rd = x0, shifts by
//! zero) expand to 32-bit instructions that have no architectural effect, as §16.7 allows.
//! C.FLD, C.FSD, C.FLDSP and C.FSDSP expand to FLD/FSD, legal only when the hart has D.

/// Bit `i` of `h`.
fn b(h: u16, i: u32) -> u32 {
    u32::from(h >> i) & 1
}

/// Bits `hi..=lo` of `h`, shifted down.
fn f(h: u16, hi: u32, lo: u32) -> u32 {
    (u32::from(h) >> lo) & ((1 << (hi - lo + 1)) - 1)
}

/// A 3-bit register field (`rd'`, `rs1'`, `rs2'`) at bit `lo`: registers x8..x15.
fn creg(h: u16, lo: u32) -> u32 {
    8 + f(h, lo + 2, lo)
}

/// Sign-extends the low `bits` bits of `v`.
fn sext(v: u32, bits: u32) -> i32 {
    ((v << (32 - bits)) as i32) >> (32 - bits)
}

fn r_type(op: u32, rd: u32, f3: u32, rs1: u32, rs2: u32, f7: u32) -> u32 {
    op | (rd << 7) | (f3 << 12) | (rs1 << 15) | (rs2 << 20) | (f7 << 25)
}

fn i_type(op: u32, rd: u32, f3: u32, rs1: u32, imm: i32) -> u32 {
    op | (rd << 7) | (f3 << 12) | (rs1 << 15) | ((imm as u32 & 0xfff) << 20)
}

fn s_type(op: u32, f3: u32, rs1: u32, rs2: u32, imm: u32) -> u32 {
    op | ((imm & 0x1f) << 7) | (f3 << 12) | (rs1 << 15) | (rs2 << 20) | ((imm >> 5) << 25)
}

fn b_type(f3: u32, rs1: u32, rs2: u32, imm: i32) -> u32 {
    let imm = imm as u32;
    0x63 | (((imm >> 11) & 1) << 7)
        | (((imm >> 1) & 0xf) << 8)
        | (f3 << 12)
        | (rs1 << 15)
        | (rs2 << 20)
        | (((imm >> 5) & 0x3f) << 25)
        | (((imm >> 12) & 1) << 31)
}

fn j_type(rd: u32, imm: i32) -> u32 {
    let imm = imm as u32;
    0x6f | (rd << 7)
        | (((imm >> 12) & 0xff) << 12)
        | (((imm >> 11) & 1) << 20)
        | (((imm >> 1) & 0x3ff) << 21)
        | (((imm >> 20) & 1) << 31)
}

// Major opcodes and funct3 values of the expansions.
const LOAD: u32 = 0x03;
const LOAD_FP: u32 = 0x07;
const STORE: u32 = 0x23;
const STORE_FP: u32 = 0x27;
const OP_IMM: u32 = 0x13;
const OP_IMM_32: u32 = 0x1b;
const OP: u32 = 0x33;
const OP_32: u32 = 0x3b;
const LUI: u32 = 0x37;
const JALR: u32 = 0x67;
const EBREAK: u32 = 0x0010_0073;
const W: u32 = 2;
const D: u32 = 3;
const SP: u32 = 2;
const RA: u32 = 1;

/// The 32-bit instruction a 16-bit one stands for, or `None` when the halfword is a reserved
/// encoding (an illegal instruction). `h & 3` must not be `3` (that is a 32-bit instruction).
pub(crate) fn expand(h: u16) -> Option<u32> {
    let funct3 = f(h, 15, 13);
    let rd = f(h, 11, 7);
    let rs2 = f(h, 6, 2);
    // CI-format 6-bit immediate: imm[5] at 12, imm[4:0] at 6:2.
    let ci = (b(h, 12) << 5) | f(h, 6, 2);
    // CL/CS offsets, doubleword (uimm[5:3] at 12:10, uimm[7:6] at 6:5) and word (uimm[2] at
    // 6, uimm[6] at 5).
    let cl_d = (f(h, 12, 10) << 3) | (f(h, 6, 5) << 6);
    let cl_w = (f(h, 12, 10) << 3) | (b(h, 6) << 2) | (b(h, 5) << 6);
    let rs1c = creg(h, 7);
    let rs2c = creg(h, 2);
    Some(match (h & 3, funct3) {
        // C.ADDI4SPN: nzuimm[5:4|9:6|2|3] at 12:5.
        (0, 0) => {
            let imm = (f(h, 12, 11) << 4) | (f(h, 10, 7) << 6) | (b(h, 6) << 2) | (b(h, 5) << 3);
            if imm == 0 {
                return None;
            }
            i_type(OP_IMM, rs2c, 0, SP, imm as i32)
        }
        (0, 1) => i_type(LOAD_FP, rs2c, D, rs1c, cl_d as i32),
        (0, 2) => i_type(LOAD, rs2c, W, rs1c, cl_w as i32),
        (0, 3) => i_type(LOAD, rs2c, D, rs1c, cl_d as i32),
        (0, 4) => return None,
        (0, 5) => s_type(STORE_FP, D, rs1c, rs2c, cl_d),
        (0, 6) => s_type(STORE, W, rs1c, rs2c, cl_w),
        (0, 7) => s_type(STORE, D, rs1c, rs2c, cl_d),
        // C.NOP / C.ADDI.
        (1, 0) => i_type(OP_IMM, rd, 0, rd, sext(ci, 6)),
        (1, 1) if rd == 0 => return None,
        (1, 1) => i_type(OP_IMM_32, rd, 0, rd, sext(ci, 6)),
        (1, 2) => i_type(OP_IMM, rd, 0, 0, sext(ci, 6)),
        // C.ADDI16SP: nzimm[9] at 12, nzimm[4|6|8:7|5] at 6:2.
        (1, 3) if rd == SP => {
            let imm = (b(h, 12) << 9)
                | (b(h, 6) << 4)
                | (b(h, 5) << 6)
                | (f(h, 4, 3) << 7)
                | (b(h, 2) << 5);
            if imm == 0 {
                return None;
            }
            i_type(OP_IMM, SP, 0, SP, sext(imm, 10))
        }
        // C.LUI: nzimm[17] at 12, nzimm[16:12] at 6:2.
        (1, 3) => {
            if ci == 0 {
                return None;
            }
            LUI | (rd << 7) | ((sext(ci, 6) as u32) << 12)
        }
        (1, 4) => {
            let rdc = rs1c;
            match f(h, 11, 10) {
                0 => i_type(OP_IMM, rdc, 5, rdc, ci as i32),
                1 => i_type(OP_IMM, rdc, 5, rdc, (ci | 0x400) as i32),
                2 => i_type(OP_IMM, rdc, 7, rdc, sext(ci, 6)),
                _ => {
                    // (funct3, funct7) of SUB, XOR, OR, AND; then SUBW, ADDW.
                    let (op, f3, f7) = match (b(h, 12), f(h, 6, 5)) {
                        (0, 0) => (OP, 0, 0x20),
                        (0, 1) => (OP, 4, 0),
                        (0, 2) => (OP, 6, 0),
                        (0, _) => (OP, 7, 0),
                        (_, 0) => (OP_32, 0, 0x20),
                        (_, 1) => (OP_32, 0, 0),
                        _ => return None,
                    };
                    r_type(op, rdc, f3, rdc, rs2c, f7)
                }
            }
        }
        // C.J: imm[11|4|9:8|10|6|7|3:1|5] at 12:2.
        (1, 5) => {
            let imm = (b(h, 12) << 11)
                | (b(h, 11) << 4)
                | (f(h, 10, 9) << 8)
                | (b(h, 8) << 10)
                | (b(h, 7) << 6)
                | (b(h, 6) << 7)
                | (f(h, 5, 3) << 1)
                | (b(h, 2) << 5);
            j_type(0, sext(imm, 12))
        }
        // C.BEQZ / C.BNEZ: imm[8|4:3] at 12:10, imm[7:6|2:1|5] at 6:2.
        (1, 6 | 7) => {
            let imm = (b(h, 12) << 8)
                | (f(h, 11, 10) << 3)
                | (f(h, 6, 5) << 6)
                | (f(h, 4, 3) << 1)
                | (b(h, 2) << 5);
            b_type(funct3 - 6, rs1c, 0, sext(imm, 9))
        }
        (2, 0) => i_type(OP_IMM, rd, 1, rd, ci as i32),
        // C.FLDSP / C.LDSP: uimm[5] at 12, uimm[4:3|8:6] at 6:2.
        (2, 1 | 3) => {
            if funct3 == 3 && rd == 0 {
                return None;
            }
            let imm = (b(h, 12) << 5) | (f(h, 6, 5) << 3) | (f(h, 4, 2) << 6);
            let op = if funct3 == 1 { LOAD_FP } else { LOAD };
            i_type(op, rd, D, SP, imm as i32)
        }
        // C.LWSP: uimm[5] at 12, uimm[4:2|7:6] at 6:2.
        (2, 2) => {
            if rd == 0 {
                return None;
            }
            let imm = (b(h, 12) << 5) | (f(h, 6, 4) << 2) | (f(h, 3, 2) << 6);
            i_type(LOAD, rd, W, SP, imm as i32)
        }
        (2, 4) => match (b(h, 12), rd, rs2) {
            (0, 0, 0) => return None,
            (0, _, 0) => i_type(JALR, 0, 0, rd, 0),
            (0, _, _) => r_type(OP, rd, 0, 0, rs2, 0),
            (_, 0, 0) => EBREAK,
            (_, _, 0) => i_type(JALR, RA, 0, rd, 0),
            _ => r_type(OP, rd, 0, rd, rs2, 0),
        },
        // C.FSDSP / C.SDSP: uimm[5:3|8:6] at 12:7.
        (2, 5 | 7) => {
            let imm = (f(h, 12, 10) << 3) | (f(h, 9, 7) << 6);
            let op = if funct3 == 5 { STORE_FP } else { STORE };
            s_type(op, D, SP, rs2, imm)
        }
        // C.SWSP: uimm[5:2|7:6] at 12:7.
        (2, 6) => {
            let imm = (f(h, 12, 9) << 2) | (f(h, 8, 7) << 6);
            s_type(STORE, W, SP, rs2, imm)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zero_halfword_and_other_reserved_encodings_expand_to_none() {
        for h in [
            0x0000u16, // all zero (C.ADDI4SPN with nzuimm = 0, rd' = x8)
            0x0004,    // C.ADDI4SPN, nzuimm = 0, rd' = x9
            0x8000,    // quadrant 0, funct3 100
            0x2001,    // C.ADDIW rd = x0
            0x6101,    // C.ADDI16SP with nzimm = 0
            0x6081,    // C.LUI ra, 0
            0x4002,    // C.LWSP rd = x0
            0x6002,    // C.LDSP rd = x0
            0x8002,    // C.JR x0
            0x9c41,    // reserved after C.SUBW / C.ADDW
            0x9c61,
        ] {
            assert_eq!(expand(h), None, "{h:#06x}");
        }
    }

    #[test]
    fn expansions_are_32_bit_encodings() {
        for h in 0..=u16::MAX {
            if h & 3 != 3 {
                if let Some(w) = expand(h) {
                    assert_eq!(w & 3, 3, "{h:#06x} -> {w:#010x}");
                }
            }
        }
    }
}
