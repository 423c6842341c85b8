//! A host-FPU fast path for FADD/FSUB/FMUL/FDIV/FSQRT/FMADD in round-to-nearest-even that is
//! exact in results and flags, after QEMU's "hardfloat" idea: it runs only when `fflags.NX`
//! is already set, so whether this operation is inexact does not need computing (NX is
//! sticky); then, with zero-or-normal operands, the host's IEEE result is the result, and the
//! only other flag possible is OF (an infinite result from finite operands). Whatever could
//! raise NV, DZ or UF (NaN or infinite operands, a zero divisor, a negative square root, a
//! result at or below the smallest normal magnitude) goes to [`super::soft`], and so do
//! subnormal operands (not needed for exactness: QEMU's choice, kept for simplicity).
//! `fast_path_agrees_with_soft_float` checks it against the soft path on edge-biased operands.
//!
//! x86-64 (SSE2) and AArch64 compute binary32 and binary64 in IEEE arithmetic with the
//! rounding mode Rust never changes from nearest-even; elsewhere (x87 double rounding) the
//! fast path is compiled out.

use super::soft::{flag, Out};

/// The host type of one format.
pub(crate) trait Host: Copy + PartialOrd {
    fn from_reg(v: u64) -> Self;
    fn to_reg(self) -> u64;
    fn add(self, b: Self) -> Self;
    fn sub(self, b: Self) -> Self;
    fn mul(self, b: Self) -> Self;
    fn div(self, b: Self) -> Self;
    fn sqrt(self) -> Self;
    fn mul_add(self, b: Self, c: Self) -> Self;
    /// Zero or normal (not subnormal, infinite or NaN).
    fn zero_or_normal(self) -> bool;
    fn is_zero(self) -> bool;
    fn is_negative(self) -> bool;
    fn is_infinite(self) -> bool;
    /// |self| <= the smallest normal magnitude (zero included).
    fn at_most_min_normal(self) -> bool;
}

macro_rules! host {
    ($t:ty, $bits:ty) => {
        impl Host for $t {
            fn from_reg(v: u64) -> Self {
                // The register value holds the format's bits in its low part.
                <$t>::from_bits(v as $bits)
            }
            fn to_reg(self) -> u64 {
                u64::from(self.to_bits())
            }
            fn add(self, b: Self) -> Self {
                self + b
            }
            fn sub(self, b: Self) -> Self {
                self - b
            }
            fn mul(self, b: Self) -> Self {
                self * b
            }
            fn div(self, b: Self) -> Self {
                self / b
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn mul_add(self, b: Self, c: Self) -> Self {
                <$t>::mul_add(self, b, c)
            }
            fn zero_or_normal(self) -> bool {
                self == 0.0 || self.is_normal()
            }
            fn is_zero(self) -> bool {
                self == 0.0
            }
            fn is_negative(self) -> bool {
                self.is_sign_negative()
            }
            fn is_infinite(self) -> bool {
                <$t>::is_infinite(self)
            }
            fn at_most_min_normal(self) -> bool {
                self.abs() <= <$t>::MIN_POSITIVE
            }
        }
    };
}
host!(f32, u32);
host!(f64, u64);

/// The operations the fast path knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FastOp {
    Add,
    Sub,
    Mul,
    Div,
    Sqrt,
    /// `a * b + c` (the callers negate operands for the other three forms).
    Fma,
}

/// The result in format `H` when the fast path applies: RNE, NX already accrued, operands
/// (bit patterns, already unboxed) zero or normal. `None`: use the soft-float path.
pub(crate) fn try_op<H: Host>(op: FastOp, a: u64, b: u64, c: u64, nx_set: bool) -> Option<Out> {
    if !nx_set || !cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        return None;
    }
    let (x, y, z) = (H::from_reg(a), H::from_reg(b), H::from_reg(c));
    if !x.zero_or_normal() {
        return None;
    }
    let r = match op {
        FastOp::Sqrt if x.is_negative() && !x.is_zero() => return None,
        FastOp::Sqrt => x.sqrt(),
        _ if !y.zero_or_normal() => return None,
        FastOp::Add => x.add(y),
        FastOp::Sub => x.sub(y),
        FastOp::Mul => x.mul(y),
        FastOp::Div if y.is_zero() => return None,
        FastOp::Div => x.div(y),
        FastOp::Fma if !z.zero_or_normal() => return None,
        FastOp::Fma => x.mul_add(y, z),
    };
    if r.is_infinite() {
        // Finite operands: only overflow gives infinity.
        return Some((r.to_reg(), flag::OF | flag::NX));
    }
    if r.at_most_min_normal() {
        // Possibly tiny (UF), or an exact zero whose sign the soft path decides too.
        return None;
    }
    Some((r.to_reg(), flag::NX))
}

#[cfg(test)]
mod tests {
    use super::super::soft::{self, Rm, D, S};
    use super::*;

    fn rng(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Operands that reach the edges: small exponent spreads (cancellation, results near the
    /// smallest normal and the largest finite value), zeros of both signs, and random bits.
    fn operand(st: &mut u64, bits: u32) -> u64 {
        let r = rng(st);
        let (exp_bits, man_bits) = if bits == 32 { (8, 23) } else { (11, 52) };
        let max_exp = (1u64 << exp_bits) - 1;
        let man = r & ((1u64 << man_bits) - 1);
        let sign = (r >> 63) << (bits - 1);
        let exp = match (r >> 56) & 7 {
            0 => 0,                           // zero or subnormal
            1 => 1 + (r >> 40) % 4,           // just above the smallest normal
            2 => max_exp - 1 - (r >> 40) % 4, // just below overflow
            3 => max_exp / 2 + (r >> 40) % 4, // near 1.0
            4 => max_exp,                     // inf / NaN
            _ => (r >> 40) % (max_exp + 1),
        };
        let man = if (r >> 59) & 3 == 0 { 0 } else { man };
        sign | (exp << man_bits) | man
    }

    /// Wherever the fast path answers, it gives the soft path's value and flags (with NX,
    /// already accrued, added to them).
    #[test]
    fn fast_path_agrees_with_soft_float() {
        let mut st = 0xa409_3822_299f_31d0;
        let mut answered = 0;
        for _ in 0..200_000 {
            for bits in [32, 64] {
                let (a, b, c) = (
                    operand(&mut st, bits),
                    operand(&mut st, bits),
                    operand(&mut st, bits),
                );
                for op in [
                    FastOp::Add,
                    FastOp::Sub,
                    FastOp::Mul,
                    FastOp::Div,
                    FastOp::Sqrt,
                    FastOp::Fma,
                ] {
                    let rm = Rm::Rne;
                    let (fast, slow) = if bits == 32 {
                        (
                            try_op::<f32>(op, a, b, c, true),
                            match op {
                                FastOp::Add => soft::add::<S>(a, b, rm),
                                FastOp::Sub => soft::sub::<S>(a, b, rm),
                                FastOp::Mul => soft::mul::<S>(a, b, rm),
                                FastOp::Div => soft::div::<S>(a, b, rm),
                                FastOp::Sqrt => soft::sqrt::<S>(a, rm),
                                FastOp::Fma => soft::fma::<S>(a, b, c, rm),
                            },
                        )
                    } else {
                        (
                            try_op::<f64>(op, a, b, c, true),
                            match op {
                                FastOp::Add => soft::add::<D>(a, b, rm),
                                FastOp::Sub => soft::sub::<D>(a, b, rm),
                                FastOp::Mul => soft::mul::<D>(a, b, rm),
                                FastOp::Div => soft::div::<D>(a, b, rm),
                                FastOp::Sqrt => soft::sqrt::<D>(a, rm),
                                FastOp::Fma => soft::fma::<D>(a, b, c, rm),
                            },
                        )
                    };
                    if let Some(f) = fast {
                        answered += 1;
                        assert_eq!(
                            f,
                            (slow.0, slow.1 | flag::NX),
                            "{op:?} {bits} {a:#x} {b:#x} {c:#x}"
                        );
                    }
                }
            }
        }
        // Most cases are answered fast; the rest went to the soft path.
        assert!(answered > 500_000, "{answered}");
        // Without NX accrued, never.
        assert_eq!(
            try_op::<f64>(FastOp::Add, 0x3ff0_0000_0000_0000, 0, 0, false),
            None
        );
    }
}
