//! Instruction decoding for RV64IMAFDC + Zicsr + Zifencei and the S-mode system instructions.
//!
//! One decoder serves the interpreter and the trace. It implements the encodings of the RISC-V
//! Unprivileged ISA (20191213): chapter 2 "RV32I Base Integer Instruction Set", chapter 5
//! "RV64I", chapter 7 "M" (multiply/divide), chapter 8 "A" (atomics), chapter 9 "Zicsr",
//! chapter 3 "Zifencei", chapters 11 "F" and 12 "D" (the hart's FP unit decodes the operands
//! of [`Kind::Fp`]) and chapter 16 "C" (compressed instructions, expanded to their 32-bit
//! equivalents by the `compressed` module); and of the Privileged Architecture (20211203):
//! §3.3.2 (WFI, SRET) and §4.2.1 "Supervisor Memory-Management Fence Instruction"
//! (SFENCE.VMA).
//!
//! Anything else, including every reserved encoding of a known opcode, decodes to
//! [`Kind::Illegal`]. Decoding never fails and never panics.

/// What an instruction does; the operands are in [`Insn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // The variants are the lower-cased mnemonics of the ISA manual.
pub enum Kind {
    /// Not an instruction this hart implements: raises an illegal-instruction exception.
    Illegal,
    Lui,
    Auipc,
    Jal,
    Jalr,
    Beq,
    Bne,
    Blt,
    Bge,
    Bltu,
    Bgeu,
    Lb,
    Lh,
    Lw,
    Ld,
    Lbu,
    Lhu,
    Lwu,
    Sb,
    Sh,
    Sw,
    Sd,
    Addi,
    Slti,
    Sltiu,
    Xori,
    Ori,
    Andi,
    Slli,
    Srli,
    Srai,
    Add,
    Sub,
    Sll,
    Slt,
    Sltu,
    Xor,
    Srl,
    Sra,
    Or,
    And,
    Addiw,
    Slliw,
    Srliw,
    Sraiw,
    Addw,
    Subw,
    Sllw,
    Srlw,
    Sraw,
    Mul,
    Mulh,
    Mulhsu,
    Mulhu,
    Div,
    Divu,
    Rem,
    Remu,
    Mulw,
    Divw,
    Divuw,
    Remw,
    Remuw,
    Fence,
    FenceI,
    Ecall,
    Ebreak,
    Sret,
    Wfi,
    SfenceVma,
    /// CSR number in `imm`, source register in `rs1`.
    Csrrw,
    Csrrs,
    Csrrc,
    /// CSR number in `imm`, 5-bit zero-extended immediate in `rs1`.
    Csrrwi,
    Csrrsi,
    Csrrci,
    LrW,
    ScW,
    /// 32-bit AMO; the operation is [`AmoOp`] `as u8` in `imm`.
    AmoW,
    LrD,
    ScD,
    /// 64-bit AMO; the operation is [`AmoOp`] `as u8` in `imm`.
    AmoD,
    /// FP load/store (F and D extensions): `rd` / `rs2` name `f` registers.
    Flw,
    Fld,
    Fsw,
    Fsd,
    /// Any other F or D instruction (OP-FP and the fused multiply-adds): the FP unit decodes
    /// the rest from the raw word, `imm` is 0.
    Fp,
}

/// The read-modify-write operation of an AMO instruction (Unprivileged ISA §8.4), by its
/// `funct5` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum AmoOp {
    Add = 0x00,
    Swap = 0x01,
    Xor = 0x04,
    Or = 0x08,
    And = 0x0c,
    Min = 0x10,
    Max = 0x14,
    Minu = 0x18,
    Maxu = 0x1c,
}

impl AmoOp {
    /// The operation for an AMO `funct5`, or `None` for LR/SC and reserved values.
    pub fn from_funct5(funct5: u32) -> Option<Self> {
        Some(match funct5 {
            0x00 => Self::Add,
            0x01 => Self::Swap,
            0x04 => Self::Xor,
            0x08 => Self::Or,
            0x0c => Self::And,
            0x10 => Self::Min,
            0x14 => Self::Max,
            0x18 => Self::Minu,
            0x1c => Self::Maxu,
            _ => return None,
        })
    }
}

/// A decoded instruction: 8 bytes, copied freely.
///
/// Register fields are 0..=31. `imm` holds the sign-extended immediate of the instruction's
/// format (already shifted for U-type, byte offset for branches and jumps), the shift amount
/// for shifts, the CSR number for CSR instructions, or the [`AmoOp`] for AMOs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    /// The operation.
    pub kind: Kind,
    /// Destination register.
    pub rd: u8,
    /// First source register (or the 5-bit immediate of `csrr*i`).
    pub rs1: u8,
    /// Second source register.
    pub rs2: u8,
    /// Immediate, shift amount, CSR number or AMO operation (see the type doc).
    pub imm: i32,
}

impl Insn {
    /// The illegal instruction.
    pub const ILLEGAL: Insn = Insn {
        kind: Kind::Illegal,
        rd: 0,
        rs1: 0,
        rs2: 0,
        imm: 0,
    };
}

/// Field `bits` of `raw` shifted down, as `u8` (the callers ask for at most 5 bits).
fn reg(raw: u32, shift: u32) -> u8 {
    // Masked to 5 bits, so the narrowing keeps every bit.
    ((raw >> shift) & 0x1f) as u8
}

/// Sign-extended I-type immediate (bits 31:20).
fn imm_i(raw: u32) -> i32 {
    // Reinterpreting the word as signed and shifting arithmetically sign-extends bit 31.
    (raw as i32) >> 20
}

/// Sign-extended S-type immediate.
fn imm_s(raw: u32) -> i32 {
    (((raw as i32) >> 25) << 5) | ((raw >> 7) & 0x1f) as i32
}

/// Sign-extended B-type immediate (a byte offset, even).
fn imm_b(raw: u32) -> i32 {
    (((raw as i32) >> 31) << 12)
        | (((raw >> 7) & 1) << 11) as i32
        | (((raw >> 25) & 0x3f) << 5) as i32
        | (((raw >> 8) & 0xf) << 1) as i32
}

/// U-type immediate: bits 31:12 in place, sign-extended when widened.
fn imm_u(raw: u32) -> i32 {
    (raw & 0xffff_f000) as i32
}

/// Sign-extended J-type immediate (a byte offset, even).
fn imm_j(raw: u32) -> i32 {
    (((raw as i32) >> 31) << 20)
        | (raw & 0x000f_f000) as i32
        | (((raw >> 20) & 1) << 11) as i32
        | (((raw >> 21) & 0x3ff) << 1) as i32
}

/// Decodes one instruction: a 32-bit word, or a 16-bit compressed instruction (`raw & 3 !=
/// 3`, in the low half; the high half is ignored), which decodes as the 32-bit instruction it
/// expands to. Unknown and reserved encodings give [`Insn::ILLEGAL`].
pub fn decode(raw: u32) -> Insn {
    if raw & 3 != 3 {
        // The expansion is a 32-bit encoding: this recursion is one level deep.
        return crate::compressed::expand(raw as u16).map_or(Insn::ILLEGAL, decode);
    }
    let rd = reg(raw, 7);
    let rs1 = reg(raw, 15);
    let rs2 = reg(raw, 20);
    let funct3 = (raw >> 12) & 7;
    let funct7 = raw >> 25;
    let mk = |kind: Kind, imm: i32| Insn {
        kind,
        rd,
        rs1,
        rs2,
        imm,
    };
    let kind_imm = match raw & 0x7f {
        0x37 => (Kind::Lui, imm_u(raw)),
        0x17 => (Kind::Auipc, imm_u(raw)),
        0x6f => (Kind::Jal, imm_j(raw)),
        0x67 if funct3 == 0 => (Kind::Jalr, imm_i(raw)),
        0x63 => {
            let kind = match funct3 {
                0 => Kind::Beq,
                1 => Kind::Bne,
                4 => Kind::Blt,
                5 => Kind::Bge,
                6 => Kind::Bltu,
                7 => Kind::Bgeu,
                _ => return Insn::ILLEGAL,
            };
            (kind, imm_b(raw))
        }
        0x03 => {
            let kind = match funct3 {
                0 => Kind::Lb,
                1 => Kind::Lh,
                2 => Kind::Lw,
                3 => Kind::Ld,
                4 => Kind::Lbu,
                5 => Kind::Lhu,
                6 => Kind::Lwu,
                _ => return Insn::ILLEGAL,
            };
            (kind, imm_i(raw))
        }
        0x23 => {
            let kind = match funct3 {
                0 => Kind::Sb,
                1 => Kind::Sh,
                2 => Kind::Sw,
                3 => Kind::Sd,
                _ => return Insn::ILLEGAL,
            };
            (kind, imm_s(raw))
        }
        0x13 => {
            let shamt = ((raw >> 20) & 0x3f) as i32;
            let top6 = raw >> 26;
            match funct3 {
                0 => (Kind::Addi, imm_i(raw)),
                2 => (Kind::Slti, imm_i(raw)),
                3 => (Kind::Sltiu, imm_i(raw)),
                4 => (Kind::Xori, imm_i(raw)),
                6 => (Kind::Ori, imm_i(raw)),
                7 => (Kind::Andi, imm_i(raw)),
                1 if top6 == 0 => (Kind::Slli, shamt),
                5 if top6 == 0 => (Kind::Srli, shamt),
                5 if top6 == 0x10 => (Kind::Srai, shamt),
                _ => return Insn::ILLEGAL,
            }
        }
        0x1b => {
            let shamt = ((raw >> 20) & 0x1f) as i32;
            match (funct3, funct7) {
                (0, _) => (Kind::Addiw, imm_i(raw)),
                (1, 0) => (Kind::Slliw, shamt),
                (5, 0) => (Kind::Srliw, shamt),
                (5, 0x20) => (Kind::Sraiw, shamt),
                _ => return Insn::ILLEGAL,
            }
        }
        0x33 => {
            let kind = match (funct7, funct3) {
                (0, 0) => Kind::Add,
                (0x20, 0) => Kind::Sub,
                (0, 1) => Kind::Sll,
                (0, 2) => Kind::Slt,
                (0, 3) => Kind::Sltu,
                (0, 4) => Kind::Xor,
                (0, 5) => Kind::Srl,
                (0x20, 5) => Kind::Sra,
                (0, 6) => Kind::Or,
                (0, 7) => Kind::And,
                (1, 0) => Kind::Mul,
                (1, 1) => Kind::Mulh,
                (1, 2) => Kind::Mulhsu,
                (1, 3) => Kind::Mulhu,
                (1, 4) => Kind::Div,
                (1, 5) => Kind::Divu,
                (1, 6) => Kind::Rem,
                (1, 7) => Kind::Remu,
                _ => return Insn::ILLEGAL,
            };
            (kind, 0)
        }
        0x3b => {
            let kind = match (funct7, funct3) {
                (0, 0) => Kind::Addw,
                (0x20, 0) => Kind::Subw,
                (0, 1) => Kind::Sllw,
                (0, 5) => Kind::Srlw,
                (0x20, 5) => Kind::Sraw,
                (1, 0) => Kind::Mulw,
                (1, 4) => Kind::Divw,
                (1, 5) => Kind::Divuw,
                (1, 6) => Kind::Remw,
                (1, 7) => Kind::Remuw,
                _ => return Insn::ILLEGAL,
            };
            (kind, 0)
        }
        0x0f => match funct3 {
            // FENCE, FENCE.TSO and PAUSE: a single in-order hart needs no ordering work.
            0 => (Kind::Fence, 0),
            1 => (Kind::FenceI, 0),
            _ => return Insn::ILLEGAL,
        },
        0x73 => match funct3 {
            0 => match raw {
                0x0000_0073 => (Kind::Ecall, 0),
                0x0010_0073 => (Kind::Ebreak, 0),
                0x1020_0073 => (Kind::Sret, 0),
                0x1050_0073 => (Kind::Wfi, 0),
                _ if funct7 == 0x09 && rd == 0 => (Kind::SfenceVma, 0),
                _ => return Insn::ILLEGAL,
            },
            4 => return Insn::ILLEGAL,
            _ => {
                let csr = (raw >> 20) as i32;
                let kind = match funct3 {
                    1 => Kind::Csrrw,
                    2 => Kind::Csrrs,
                    3 => Kind::Csrrc,
                    5 => Kind::Csrrwi,
                    6 => Kind::Csrrsi,
                    _ => Kind::Csrrci,
                };
                (kind, csr)
            }
        },
        0x2f => {
            let funct5 = raw >> 27;
            let wide = match funct3 {
                2 => false,
                3 => true,
                _ => return Insn::ILLEGAL,
            };
            match funct5 {
                0x02 if rs2 == 0 => (if wide { Kind::LrD } else { Kind::LrW }, 0),
                0x03 => (if wide { Kind::ScD } else { Kind::ScW }, 0),
                _ => match AmoOp::from_funct5(funct5) {
                    Some(op) => (if wide { Kind::AmoD } else { Kind::AmoW }, op as i32),
                    None => return Insn::ILLEGAL,
                },
            }
        }
        0x07 => match funct3 {
            2 => (Kind::Flw, imm_i(raw)),
            3 => (Kind::Fld, imm_i(raw)),
            _ => return Insn::ILLEGAL,
        },
        0x27 => match funct3 {
            2 => (Kind::Fsw, imm_s(raw)),
            3 => (Kind::Fsd, imm_s(raw)),
            _ => return Insn::ILLEGAL,
        },
        0x43 | 0x47 | 0x4b | 0x4f | 0x53 if crate::fpu::op(raw).is_some() => (Kind::Fp, 0),
        _ => return Insn::ILLEGAL,
    };
    mk(kind_imm.0, kind_imm.1)
}

/// Instruction encoders for tests: build programs in Rust, no assembler needed.
#[cfg(test)]
pub(crate) mod asm {
    #![allow(missing_docs, clippy::too_many_arguments)]

    fn r(op: u32, rd: u32, f3: u32, rs1: u32, rs2: u32, f7: u32) -> u32 {
        op | (rd << 7) | (f3 << 12) | (rs1 << 15) | (rs2 << 20) | (f7 << 25)
    }
    fn i(op: u32, rd: u32, f3: u32, rs1: u32, imm: i32) -> u32 {
        op | (rd << 7) | (f3 << 12) | (rs1 << 15) | (((imm as u32) & 0xfff) << 20)
    }
    fn s(op: u32, f3: u32, rs1: u32, rs2: u32, imm: i32) -> u32 {
        let imm = imm as u32;
        op | ((imm & 0x1f) << 7)
            | (f3 << 12)
            | (rs1 << 15)
            | (rs2 << 20)
            | (((imm >> 5) & 0x7f) << 25)
    }
    fn b(f3: u32, rs1: u32, rs2: u32, imm: i32) -> u32 {
        let imm = imm as u32;
        0x63 | (((imm >> 11) & 1) << 7)
            | (((imm >> 1) & 0xf) << 8)
            | (f3 << 12)
            | (rs1 << 15)
            | (rs2 << 20)
            | (((imm >> 5) & 0x3f) << 25)
            | (((imm >> 12) & 1) << 31)
    }
    pub fn lui(rd: u32, imm20: u32) -> u32 {
        0x37 | (rd << 7) | (imm20 << 12)
    }
    pub fn auipc(rd: u32, imm20: u32) -> u32 {
        0x17 | (rd << 7) | (imm20 << 12)
    }
    pub fn jal(rd: u32, imm: i32) -> u32 {
        let imm = imm as u32;
        0x6f | (rd << 7)
            | (((imm >> 12) & 0xff) << 12)
            | (((imm >> 11) & 1) << 20)
            | (((imm >> 1) & 0x3ff) << 21)
            | (((imm >> 20) & 1) << 31)
    }
    pub fn jalr(rd: u32, rs1: u32, imm: i32) -> u32 {
        i(0x67, rd, 0, rs1, imm)
    }
    pub fn beq(rs1: u32, rs2: u32, imm: i32) -> u32 {
        b(0, rs1, rs2, imm)
    }
    pub fn bne(rs1: u32, rs2: u32, imm: i32) -> u32 {
        b(1, rs1, rs2, imm)
    }
    pub fn blt(rs1: u32, rs2: u32, imm: i32) -> u32 {
        b(4, rs1, rs2, imm)
    }
    pub fn bge(rs1: u32, rs2: u32, imm: i32) -> u32 {
        b(5, rs1, rs2, imm)
    }
    pub fn bltu(rs1: u32, rs2: u32, imm: i32) -> u32 {
        b(6, rs1, rs2, imm)
    }
    pub fn bgeu(rs1: u32, rs2: u32, imm: i32) -> u32 {
        b(7, rs1, rs2, imm)
    }
    /// Load of width `f3` (0 lb, 1 lh, 2 lw, 3 ld, 4 lbu, 5 lhu, 6 lwu).
    pub fn load(f3: u32, rd: u32, rs1: u32, imm: i32) -> u32 {
        i(0x03, rd, f3, rs1, imm)
    }
    /// Store of width `f3` (0 sb, 1 sh, 2 sw, 3 sd).
    pub fn store(f3: u32, rs1: u32, rs2: u32, imm: i32) -> u32 {
        s(0x23, f3, rs1, rs2, imm)
    }
    pub fn ld(rd: u32, rs1: u32, imm: i32) -> u32 {
        load(3, rd, rs1, imm)
    }
    pub fn sd(rs1: u32, rs2: u32, imm: i32) -> u32 {
        store(3, rs1, rs2, imm)
    }
    pub fn sw(rs1: u32, rs2: u32, imm: i32) -> u32 {
        store(2, rs1, rs2, imm)
    }
    pub fn lw(rd: u32, rs1: u32, imm: i32) -> u32 {
        load(2, rd, rs1, imm)
    }
    /// OP-IMM with `f3` (0 addi, 2 slti, 3 sltiu, 4 xori, 6 ori, 7 andi).
    pub fn opi(f3: u32, rd: u32, rs1: u32, imm: i32) -> u32 {
        i(0x13, rd, f3, rs1, imm)
    }
    pub fn addi(rd: u32, rs1: u32, imm: i32) -> u32 {
        opi(0, rd, rs1, imm)
    }
    pub fn slli(rd: u32, rs1: u32, sh: u32) -> u32 {
        i(0x13, rd, 1, rs1, sh as i32)
    }
    pub fn srli(rd: u32, rs1: u32, sh: u32) -> u32 {
        i(0x13, rd, 5, rs1, sh as i32)
    }
    pub fn srai(rd: u32, rs1: u32, sh: u32) -> u32 {
        i(0x13, rd, 5, rs1, (sh | 0x400) as i32)
    }
    pub fn addiw(rd: u32, rs1: u32, imm: i32) -> u32 {
        i(0x1b, rd, 0, rs1, imm)
    }
    pub fn slliw(rd: u32, rs1: u32, sh: u32) -> u32 {
        i(0x1b, rd, 1, rs1, sh as i32)
    }
    pub fn srliw(rd: u32, rs1: u32, sh: u32) -> u32 {
        i(0x1b, rd, 5, rs1, sh as i32)
    }
    pub fn sraiw(rd: u32, rs1: u32, sh: u32) -> u32 {
        i(0x1b, rd, 5, rs1, (sh | 0x400) as i32)
    }
    /// OP (0x33) with funct7 and funct3.
    pub fn op(f7: u32, f3: u32, rd: u32, rs1: u32, rs2: u32) -> u32 {
        r(0x33, rd, f3, rs1, rs2, f7)
    }
    /// OP-32 (0x3b) with funct7 and funct3.
    pub fn op32(f7: u32, f3: u32, rd: u32, rs1: u32, rs2: u32) -> u32 {
        r(0x3b, rd, f3, rs1, rs2, f7)
    }
    pub fn add(rd: u32, rs1: u32, rs2: u32) -> u32 {
        op(0, 0, rd, rs1, rs2)
    }
    /// CSR instruction with funct3 (1 rw, 2 rs, 3 rc, 5 rwi, 6 rsi, 7 rci).
    pub fn csr(f3: u32, rd: u32, csr: u32, rs1: u32) -> u32 {
        0x73 | (rd << 7) | (f3 << 12) | (rs1 << 15) | (csr << 20)
    }
    pub fn csrrw(rd: u32, c: u32, rs1: u32) -> u32 {
        csr(1, rd, c, rs1)
    }
    pub fn csrrs(rd: u32, c: u32, rs1: u32) -> u32 {
        csr(2, rd, c, rs1)
    }
    /// AMO with funct5 and width funct3 (2 = W, 3 = D); aq/rl clear.
    pub fn amo(f5: u32, f3: u32, rd: u32, rs1: u32, rs2: u32) -> u32 {
        r(0x2f, rd, f3, rs1, rs2, f5 << 2)
    }
    pub const ECALL: u32 = 0x0000_0073;
    pub const EBREAK: u32 = 0x0010_0073;
    pub const SRET: u32 = 0x1020_0073;
    pub const WFI: u32 = 0x1050_0073;
    pub const FENCE_I: u32 = 0x0000_100f;
    pub fn sfence_vma(rs1: u32, rs2: u32) -> u32 {
        r(0x73, 0, 0, rs1, rs2, 0x09)
    }
}

#[cfg(test)]
mod tests {
    use super::asm::*;
    use super::*;

    #[test]
    fn immediates_round_trip_through_the_encoders() {
        for imm in [-2048, -1, 0, 1, 5, 2047] {
            assert_eq!(decode(addi(1, 2, imm)).imm, imm);
            assert_eq!(decode(sd(1, 2, imm)).imm, imm);
        }
        for imm in [-4096, -2, 0, 2, 4094] {
            let d = decode(beq(3, 4, imm));
            assert_eq!((d.kind, d.rs1, d.rs2, d.imm), (Kind::Beq, 3, 4, imm));
        }
        for imm in [-(1 << 20), -2, 0, 2, (1 << 20) - 2] {
            assert_eq!(decode(jal(1, imm)).imm, imm);
        }
        assert_eq!(decode(lui(5, 0xfffff)).imm, -4096);
        assert_eq!(
            decode(srai(1, 2, 63)),
            Insn {
                kind: Kind::Srai,
                rd: 1,
                rs1: 2,
                rs2: 31,
                imm: 63
            }
        );
    }

    #[test]
    fn reserved_encodings_are_illegal() {
        assert_eq!(decode(0).kind, Kind::Illegal);
        assert_eq!(decode(0xffff_ffff).kind, Kind::Illegal);
        // The all-zero halfword (a reserved compressed encoding).
        assert_eq!(decode(0xffff_0000).kind, Kind::Illegal);
        // slliw with shamt[5] set is reserved.
        assert_eq!(decode(slliw(1, 2, 32)).kind, Kind::Illegal);
        // lr.w with rs2 != 0 is reserved.
        assert_eq!(decode(amo(0x02, 2, 1, 2, 3)).kind, Kind::Illegal);
        // AMO of width byte.
        assert_eq!(decode(amo(0x01, 0, 1, 2, 3)).kind, Kind::Illegal);
        // Load funct3 7, store funct3 4, branch funct3 2, mret (M-mode only).
        assert_eq!(decode(load(7, 1, 2, 0)).kind, Kind::Illegal);
        assert_eq!(decode(store(4, 1, 2, 0)).kind, Kind::Illegal);
        assert_eq!(decode(b_f3_2()).kind, Kind::Illegal);
        assert_eq!(decode(0x3020_0073).kind, Kind::Illegal);
    }

    fn b_f3_2() -> u32 {
        beq(1, 2, 8) | (2 << 12)
    }

    #[test]
    fn system_instructions() {
        assert_eq!(decode(ECALL).kind, Kind::Ecall);
        assert_eq!(decode(EBREAK).kind, Kind::Ebreak);
        assert_eq!(decode(SRET).kind, Kind::Sret);
        assert_eq!(decode(WFI).kind, Kind::Wfi);
        assert_eq!(decode(FENCE_I).kind, Kind::FenceI);
        assert_eq!(decode(sfence_vma(1, 2)).kind, Kind::SfenceVma);
        let c = decode(csrrs(3, 0xc01, 0));
        assert_eq!((c.kind, c.rd, c.imm), (Kind::Csrrs, 3, 0xc01));
        let a = decode(amo(0x1c, 3, 1, 2, 3));
        assert_eq!((a.kind, a.imm), (Kind::AmoD, AmoOp::Maxu as i32));
    }
}
