//! The F and D extensions (RISC-V Unprivileged ISA 20191213, chapters 11 and 12): the
//! floating-point register file, `fcsr`, and the execution of every RV64F / RV64D
//! instruction, with the `sstatus.FS` state tracking of Privileged spec §3.1.6.6.
//!
//! - With `FS` = Off every FP instruction and every access to `fflags`, `frm`, `fcsr` is an
//!   illegal instruction; an instruction that changes an `f` register, `fflags` or `frm`
//!   sets `FS` = Dirty (Linux saves a task's FP state only when it is Dirty).
//! - A rounding mode of 5 or 6 in the instruction, or DYN with `frm` 5..=7, makes the
//!   instruction illegal (§11.2).
//! - The arithmetic is in [`soft`], with a host-FPU fast path ([`fast`]) for the common
//!   round-to-nearest-even case once `fflags.NX` is set.
//!
//! The decoder gives FP loads/stores their own [`Kind`]s and every other FP instruction
//! [`Kind::Fp`], which this module decodes again from the raw word ([`op`]): the hart's
//! hot path carries one arm for all of them and `Insn` stays 8 bytes.

mod fast;
pub(crate) mod soft;
#[cfg(test)]
mod tests;

use crate::decode::{Insn, Kind};
use crate::hart::{sstatus, Hart, Trap};
use fast::FastOp;
use soft::{Format, Int, Rm, D, S};

/// CSR numbers (Unprivileged ISA §11.2).
pub(crate) mod csr {
    pub const FFLAGS: u16 = 0x001;
    pub const FRM: u16 = 0x002;
    pub const FCSR: u16 = 0x003;
}

/// The floating-point state of the hart.
#[derive(Clone, Debug, Default)]
pub(crate) struct FpState {
    /// `f0`..`f31`, 64 bits each (binary32 values NaN-boxed).
    pub(crate) f: [u64; 32],
    /// Accrued exceptions: NV DZ OF UF NX in bits 4..0.
    pub(crate) fflags: u8,
    /// Dynamic rounding mode, 0..=7 (5..=7 make DYN instructions illegal).
    pub(crate) frm: u8,
}

/// An OP-FP or fused multiply-add instruction, decoded from its raw word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// FMADD (0), FMSUB (1), FNMSUB (2), FNMADD (3).
    Fma(u8),
    Add,
    Sub,
    Mul,
    Div,
    Sqrt,
    /// FSGNJ / FSGNJN / FSGNJX by funct3.
    Sgnj,
    /// FMIN / FMAX by funct3.
    MinMax,
    /// FCVT.S.D.
    CvtSD,
    /// FCVT.D.S.
    CvtDS,
    /// FLE / FLT / FEQ by funct3.
    Cmp,
    /// FCVT.{W,WU,L,LU}.fmt.
    ToInt(Int),
    /// FCVT.fmt.{W,WU,L,LU}.
    FromInt(Int),
    /// FMV.X.W / FMV.X.D (funct3 0) and FCLASS (funct3 1).
    MvXClass,
    /// FMV.W.X / FMV.D.X.
    MvFromX,
}

/// Decodes an instruction of major opcode OP-FP (0x53) or MADD/MSUB/NMSUB/NMADD
/// (0x43/0x47/0x4b/0x4f): the operation and whether it is the D (true) or S form. `None` for
/// other opcodes, other formats (H, Q) and reserved encodings, including a static rounding
/// mode of 5 or 6.
pub(crate) fn op(raw: u32) -> Option<(Op, bool)> {
    let fmt = (raw >> 25) & 3;
    let funct3 = (raw >> 12) & 7;
    let rs2 = (raw >> 20) & 31;
    let double = match fmt {
        0 => false,
        1 => true,
        _ => return None,
    };
    let valid_rm = funct3 != 5 && funct3 != 6;
    let int = |v: u32| match v {
        0 => Some(Int::W),
        1 => Some(Int::Wu),
        2 => Some(Int::L),
        3 => Some(Int::Lu),
        _ => None,
    };
    let op = match raw & 0x7f {
        0x43 => Op::Fma(0),
        0x47 => Op::Fma(1),
        0x4b => Op::Fma(2),
        0x4f => Op::Fma(3),
        0x53 => match raw >> 27 {
            0x00 => Op::Add,
            0x01 => Op::Sub,
            0x02 => Op::Mul,
            0x03 => Op::Div,
            0x0b if rs2 == 0 => Op::Sqrt,
            0x04 if funct3 <= 2 => return Some((Op::Sgnj, double)),
            0x05 if funct3 <= 1 => return Some((Op::MinMax, double)),
            0x08 if !double && rs2 == 1 => Op::CvtSD,
            0x08 if double && rs2 == 0 => Op::CvtDS,
            0x14 if funct3 <= 2 => return Some((Op::Cmp, double)),
            0x18 => Op::ToInt(int(rs2)?),
            0x1a => Op::FromInt(int(rs2)?),
            0x1c if rs2 == 0 && funct3 <= 1 => return Some((Op::MvXClass, double)),
            0x1e if rs2 == 0 && funct3 == 0 => return Some((Op::MvFromX, double)),
            _ => return None,
        },
        _ => return None,
    };
    // Everything that reaches here rounds: its funct3 is a rounding mode.
    valid_rm.then_some((op, double))
}

/// Where a result goes, and the flags it raises.
enum Res {
    /// An `f` register value (already NaN-boxed).
    F(u64, u8),
    /// An `x` register value.
    X(u64, u8),
}

/// The operands of one instruction, as the register files hold them.
struct Operands {
    f1: u64,
    f2: u64,
    f3: u64,
    x1: u64,
    funct3: u32,
    /// `fflags.NX` is already set (enables [`fast`]).
    nx: bool,
}

/// [`fast::try_op`] in format `T` when the rounding mode is RNE.
fn fast_path<T: Format>(op: FastOp, a: u64, b: u64, c: u64, rm: Rm, nx: bool) -> Option<soft::Out> {
    if rm != Rm::Rne {
        return None;
    }
    if T::BITS == 32 {
        fast::try_op::<f32>(op, a, b, c, nx)
    } else {
        fast::try_op::<f64>(op, a, b, c, nx)
    }
}

/// A two-operand operation: the fast path, else `soft`.
fn arith<T: Format>(
    op: FastOp,
    a: u64,
    b: u64,
    rm: Rm,
    nx: bool,
    soft: fn(u64, u64, Rm) -> soft::Out,
) -> soft::Out {
    fast_path::<T>(op, a, b, 0, rm, nx).unwrap_or_else(|| soft(a, b, rm))
}

/// Computes `op` in format `T`; `None` when it needs a rounding mode and `rm` is invalid.
fn compute<T: Format>(op: Op, o: &Operands, rm: Option<Rm>) -> Option<Res> {
    let (a, b, c) = (T::unbox(o.f1), T::unbox(o.f2), T::unbox(o.f3));
    let sign = 1u64 << (T::BITS - 1);
    let f = |(v, fl): soft::Out| Res::F(T::nan_box(v), fl);
    Some(match op {
        Op::Fma(k) => {
            // FMSUB: a*b - c; FNMSUB: -(a*b) + c; FNMADD: -(a*b) - c.
            let a = if k >= 2 { a ^ sign } else { a };
            let c = if k & 1 != 0 { c ^ sign } else { c };
            let rm = rm?;
            f(fast_path::<T>(FastOp::Fma, a, b, c, rm, o.nx)
                .unwrap_or_else(|| soft::fma::<T>(a, b, c, rm)))
        }
        Op::Add => f(arith::<T>(FastOp::Add, a, b, rm?, o.nx, soft::add::<T>)),
        Op::Sub => f(arith::<T>(FastOp::Sub, a, b, rm?, o.nx, soft::sub::<T>)),
        Op::Mul => f(arith::<T>(FastOp::Mul, a, b, rm?, o.nx, soft::mul::<T>)),
        Op::Div => f(arith::<T>(FastOp::Div, a, b, rm?, o.nx, soft::div::<T>)),
        Op::Sqrt => {
            let rm = rm?;
            f(fast_path::<T>(FastOp::Sqrt, a, 0, 0, rm, o.nx)
                .unwrap_or_else(|| soft::sqrt::<T>(a, rm)))
        }
        Op::Sgnj => f((soft::sgnj::<T>(a, b, o.funct3), 0)),
        Op::MinMax => f(soft::min_max::<T>(a, b, o.funct3 == 1)),
        Op::CvtSD => {
            let (v, fl) = soft::d_to_s(D::unbox(o.f1), rm?);
            Res::F(S::nan_box(v), fl)
        }
        Op::CvtDS => {
            // Exact, but the rounding mode must still be valid.
            rm?;
            let (v, fl) = soft::s_to_d(S::unbox(o.f1));
            Res::F(D::nan_box(v), fl)
        }
        Op::Cmp => {
            let (v, fl) = soft::compare::<T>(a, b, o.funct3);
            Res::X(v, fl)
        }
        Op::ToInt(int) => {
            let (v, fl) = soft::to_int::<T>(a, int, rm?);
            Res::X(v, fl)
        }
        Op::FromInt(int) => f(soft::from_int::<T>(o.x1, int, rm?)),
        Op::MvXClass if o.funct3 == 1 => Res::X(soft::class::<T>(a), 0),
        // FMV.X.W moves the low 32 bits whatever the boxing, sign-extended (§11.10).
        Op::MvXClass if T::BITS == 32 => Res::X(o.f1 as u32 as i32 as i64 as u64, 0),
        Op::MvXClass => Res::X(o.f1, 0),
        Op::MvFromX if T::BITS == 32 => Res::F(T::nan_box(o.x1 & 0xffff_ffff), 0),
        Op::MvFromX => Res::F(o.x1, 0),
    })
}

impl Hart {
    /// Whether the FP unit is on (`sstatus.FS` != Off).
    fn fp_enabled(&self) -> bool {
        self.sstatus & sstatus::FS != 0
    }

    fn fp_dirty(&mut self) {
        self.sstatus |= sstatus::FS;
    }

    /// Executes an FP load, store or [`Kind::Fp`] instruction; `rs1` is `x[rs1]`.
    #[inline(never)]
    pub(crate) fn fp_exec(&mut self, i: Insn, raw: u32, rs1: u64) -> Result<(), Trap> {
        if !self.fp_enabled() {
            return Err(Trap::illegal(raw));
        }
        let addr = rs1.wrapping_add(i.imm as i64 as u64);
        let rd = i.rd as usize & 31;
        let rs2 = self.fp.f[i.rs2 as usize & 31];
        match i.kind {
            Kind::Flw => {
                let v = self.load::<4>(addr)?;
                self.fp.f[rd] = S::nan_box(v);
                self.fp_dirty();
            }
            Kind::Fld => {
                self.fp.f[rd] = self.load::<8>(addr)?;
                self.fp_dirty();
            }
            // Stores move the low bits unchanged, boxed or not (§12.2).
            Kind::Fsw => self.store::<4>(addr, rs2 & 0xffff_ffff)?,
            Kind::Fsd => self.store::<8>(addr, rs2)?,
            _ => self.fp_op(raw, rs1)?,
        }
        Ok(())
    }

    fn fp_op(&mut self, raw: u32, x1: u64) -> Result<(), Trap> {
        let illegal = Trap::illegal(raw);
        let (op, double) = op(raw).ok_or(illegal)?;
        let reg = |shift: u32| self.fp.f[((raw >> shift) & 31) as usize];
        let o = Operands {
            f1: reg(15),
            f2: reg(20),
            f3: reg(27),
            x1,
            funct3: (raw >> 12) & 7,
            nx: self.fp.fflags & soft::flag::NX != 0,
        };
        let rm = Rm::from_bits(if o.funct3 == 7 {
            u32::from(self.fp.frm)
        } else {
            o.funct3
        });
        let res = if double {
            compute::<D>(op, &o, rm)
        } else {
            compute::<S>(op, &o, rm)
        }
        .ok_or(illegal)?;
        let rd = ((raw >> 7) & 31) as usize;
        let fl = match res {
            Res::F(v, fl) => {
                self.fp.f[rd] = v;
                self.fp_dirty();
                fl
            }
            Res::X(v, fl) => {
                self.x[rd] = v;
                fl
            }
        };
        if fl != 0 {
            self.fp.fflags |= fl;
            self.fp_dirty();
        }
        Ok(())
    }

    /// Reads `fflags`, `frm` or `fcsr`; `None` (illegal) with FS = Off.
    pub(crate) fn fp_csr_read(&self, csr: u16) -> Option<u64> {
        if !self.fp_enabled() {
            return None;
        }
        let (flags, frm) = (u64::from(self.fp.fflags), u64::from(self.fp.frm));
        Some(match csr {
            csr::FFLAGS => flags,
            csr::FRM => frm,
            _ => frm << 5 | flags,
        })
    }

    /// Writes `fflags`, `frm` or `fcsr` (bits beyond theirs are ignored); `false` (illegal)
    /// with FS = Off.
    pub(crate) fn fp_csr_write(&mut self, csr: u16, v: u64) -> bool {
        if !self.fp_enabled() {
            return false;
        }
        match csr {
            csr::FFLAGS => self.fp.fflags = (v & 0x1f) as u8,
            csr::FRM => self.fp.frm = (v & 7) as u8,
            _ => {
                self.fp.fflags = (v & 0x1f) as u8;
                self.fp.frm = ((v >> 5) & 7) as u8;
            }
        }
        self.fp_dirty();
        true
    }
}
