//! IEEE 754 binary32 / binary64 arithmetic with RISC-V's choices (Unprivileged ISA chapters 11
//! "F" and 12 "D"), on raw bit patterns.
//!
//! The rounding and the exception flags come from `rustc_apfloat` (the Rust port of LLVM's
//! APFloat, which rustc's constant evaluator and Miri use). What RISC-V specifies on top of
//! IEEE 754, or APFloat does not provide, is here:
//! - every NaN result is the canonical NaN (§11.3);
//! - tininess is detected after rounding (§11.6). APFloat calls a result tiny when it is
//!   subnormal *after* rounding to the subnormal grid, which misses results that round up to
//!   the smallest normal only because of the coarser grid; those few are recomputed with the
//!   same precision and an unbounded exponent range ([`WideSingleS`], [`WideDoubleS`]);
//! - conversions to integers saturate, NaN becomes the largest integer (§11.7, Table 11.4);
//! - FMIN/FMAX are minimumNumber/maximumNumber with -0 < +0 (§11.6), comparisons and
//!   FCLASS (§11.8, §11.9);
//! - square root, which APFloat lacks: an integer square root with a sticky bit, rounded once.

use core::cmp::Ordering;

use rustc_apfloat::ieee::{Double, IeeeFloat, Semantics, Single};
use rustc_apfloat::{Float, FloatConvert, Round, Status, StatusAnd};

/// `fflags` bits (Unprivileged ISA §11.2, Table 11.2).
pub(crate) mod flag {
    /// Invalid operation.
    pub const NV: u8 = 0x10;
    /// Divide by zero.
    pub const DZ: u8 = 0x08;
    /// Overflow.
    pub const OF: u8 = 0x04;
    /// Underflow.
    pub const UF: u8 = 0x02;
    /// Inexact.
    pub const NX: u8 = 0x01;
}

/// binary32's precision (24 bits) with binary64's exponent range: no binary32 result is
/// subnormal there, so rounding in it is rounding "with unbounded exponent range".
pub(crate) struct WideSingleS;
impl Semantics for WideSingleS {
    const BITS: usize = 1 + 11 + 23;
    const EXP_BITS: usize = 11;
}

/// binary64's precision (53 bits) with a 15-bit exponent, for the same purpose.
pub(crate) struct WideDoubleS;
impl Semantics for WideDoubleS {
    const BITS: usize = 1 + 15 + 52;
    const EXP_BITS: usize = 15;
}

/// One of the two formats: binary32 (`S`) or binary64 (`D`).
pub(crate) trait Format {
    /// The APFloat type.
    type F: Float + FloatConvert<Self::W>;
    /// The same precision with an unbounded exponent range.
    type W: Float + FloatConvert<Self::F>;
    /// Width in bits.
    const BITS: u32;
    /// The canonical NaN (§11.3): positive, quiet, payload zero.
    const CANONICAL_NAN: u64;
    /// The operand a register holds (§12.2 "NaN Boxing of Narrower Values"): a binary32
    /// value is only valid with the upper 32 bits all ones, otherwise it reads as the
    /// canonical NaN.
    fn unbox(reg: u64) -> u64;
    /// The register value that holds result `v` (NaN-boxed for binary32).
    fn nan_box(v: u64) -> u64;
}

/// binary32.
pub(crate) struct S;
impl Format for S {
    type F = Single;
    type W = IeeeFloat<WideSingleS>;
    const BITS: u32 = 32;
    const CANONICAL_NAN: u64 = 0x7fc0_0000;
    fn unbox(reg: u64) -> u64 {
        if reg >> 32 == 0xffff_ffff {
            reg & 0xffff_ffff
        } else {
            Self::CANONICAL_NAN
        }
    }
    fn nan_box(v: u64) -> u64 {
        v | 0xffff_ffff_0000_0000
    }
}

/// binary64.
pub(crate) struct D;
impl Format for D {
    type F = Double;
    type W = IeeeFloat<WideDoubleS>;
    const BITS: u32 = 64;
    const CANONICAL_NAN: u64 = 0x7ff8_0000_0000_0000;
    fn unbox(reg: u64) -> u64 {
        reg
    }
    fn nan_box(v: u64) -> u64 {
        v
    }
}

/// RISC-V rounding modes (§11.2, Table 11.1), already resolved from DYN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rm {
    /// Round to nearest, ties to even.
    Rne = 0,
    /// Round towards zero.
    Rtz = 1,
    /// Round down (towards -infinity).
    Rdn = 2,
    /// Round up (towards +infinity).
    Rup = 3,
    /// Round to nearest, ties to max magnitude.
    Rmm = 4,
}

impl Rm {
    /// The mode for an `rm` / `frm` value 0..=4; `None` for the reserved 5, 6 and DYN (7).
    pub(crate) fn from_bits(v: u32) -> Option<Rm> {
        Some(match v {
            0 => Rm::Rne,
            1 => Rm::Rtz,
            2 => Rm::Rdn,
            3 => Rm::Rup,
            4 => Rm::Rmm,
            _ => return None,
        })
    }

    fn apfloat(self) -> Round {
        match self {
            Rm::Rne => Round::NearestTiesToEven,
            Rm::Rtz => Round::TowardZero,
            Rm::Rdn => Round::TowardNegative,
            Rm::Rup => Round::TowardPositive,
            Rm::Rmm => Round::NearestTiesToAway,
        }
    }
}

/// A result: bit pattern (zero-extended) and the `fflags` it raises.
pub(crate) type Out = (u64, u8);

fn flags(s: Status) -> u8 {
    let mut f = 0;
    for (st, fl) in [
        (Status::INVALID_OP, flag::NV),
        (Status::DIV_BY_ZERO, flag::DZ),
        (Status::OVERFLOW, flag::OF),
        (Status::UNDERFLOW, flag::UF),
        (Status::INEXACT, flag::NX),
    ] {
        if s.contains(st) {
            f |= fl;
        }
    }
    f
}

fn from_bits<T: Format>(v: u64) -> T::F {
    T::F::from_bits(u128::from(v))
}

fn bits<T: Format>(v: T::F) -> u64 {
    if v.is_nan() {
        T::CANONICAL_NAN
    } else {
        // The value is T::BITS wide.
        v.to_bits() as u64
    }
}

fn widen<T: Format>(v: T::F) -> T::W {
    // Same precision, wider exponent range: exact.
    v.convert(&mut false).value
}

/// Finishes an arithmetic result: canonical NaN, flags, and two corrections of APFloat's
/// flags (see the module doc) for results at the edges of the finite range. `wide`
/// recomputes the operation in `T::W`, where neither edge exists.
fn finish<T: Format>(r: StatusAnd<T::F>, wide: impl FnOnce() -> StatusAnd<T::W>) -> Out {
    let mut f = flags(r.status);
    if f & flag::NX == 0 || r.value.is_nan() {
        return (bits::<T>(r.value), f);
    }
    let mag = r.value.abs();
    let min = T::F::smallest_normalized();
    let max = T::F::largest();
    // Tiny after rounding although rounded up to the smallest normal: UF.
    let check_uf = f & flag::UF == 0 && mag.bitwise_eq(min);
    // Beyond the largest finite value although a directed rounding brought it back: OF
    // (IEEE 754 §7.4: overflow is decided on the result with an unbounded exponent).
    let check_of = f & flag::OF == 0 && mag.bitwise_eq(max);
    if check_uf || check_of {
        let w = wide().value.abs();
        if check_uf && w.partial_cmp(&widen::<T>(min)) == Some(Ordering::Less) {
            f |= flag::UF;
        }
        if check_of && w.partial_cmp(&widen::<T>(max)) == Some(Ordering::Greater) {
            f |= flag::OF;
        }
    }
    (bits::<T>(r.value), f)
}

/// FADD.
pub(crate) fn add<T: Format>(a: u64, b: u64, rm: Rm) -> Out {
    let (a, b, r) = (from_bits::<T>(a), from_bits::<T>(b), rm.apfloat());
    finish::<T>(a.add_r(b, r), || widen::<T>(a).add_r(widen::<T>(b), r))
}

/// FSUB.
pub(crate) fn sub<T: Format>(a: u64, b: u64, rm: Rm) -> Out {
    let (a, b, r) = (from_bits::<T>(a), from_bits::<T>(b), rm.apfloat());
    finish::<T>(a.sub_r(b, r), || widen::<T>(a).sub_r(widen::<T>(b), r))
}

/// FMUL.
pub(crate) fn mul<T: Format>(a: u64, b: u64, rm: Rm) -> Out {
    let (a, b, r) = (from_bits::<T>(a), from_bits::<T>(b), rm.apfloat());
    finish::<T>(a.mul_r(b, r), || widen::<T>(a).mul_r(widen::<T>(b), r))
}

/// FDIV.
pub(crate) fn div<T: Format>(a: u64, b: u64, rm: Rm) -> Out {
    let (a, b, r) = (from_bits::<T>(a), from_bits::<T>(b), rm.apfloat());
    finish::<T>(a.div_r(b, r), || widen::<T>(a).div_r(widen::<T>(b), r))
}

/// `a * b + c` rounded once (FMADD; the other three negate `a` and/or `c` first, which is
/// exactly their definition in §11.6). `inf * 0 + qNaN` raises NV, as RISC-V requires and
/// APFloat does (the multiplication is invalid before the addend is looked at).
pub(crate) fn fma<T: Format>(a: u64, b: u64, c: u64, rm: Rm) -> Out {
    let (a, b, c, r) = (
        from_bits::<T>(a),
        from_bits::<T>(b),
        from_bits::<T>(c),
        rm.apfloat(),
    );
    finish::<T>(a.mul_add_r(b, c, r), || {
        widen::<T>(a).mul_add_r(widen::<T>(b), widen::<T>(c), r)
    })
}

/// FSQRT: the integer square root of the significand, scaled so that it has at least two bits
/// beyond the precision, plus a sticky bit for a non-zero remainder, is rounded once. A
/// square root of a positive finite value is never subnormal and never overflows, so the
/// final scaling by a power of two is exact.
pub(crate) fn sqrt<T: Format>(a: u64, rm: Rm) -> Out {
    let v = from_bits::<T>(a);
    if v.is_nan() {
        let nv = if v.is_signaling() { flag::NV } else { 0 };
        return (T::CANONICAL_NAN, nv);
    }
    if v.is_zero() {
        return (a, 0);
    }
    if v.is_negative() {
        return (T::CANONICAL_NAN, flag::NV);
    }
    if v.is_infinite() {
        return (a, 0);
    }
    let man_bits = T::F::PRECISION as u32 - 1;
    let exp_mask = (1u64 << (T::BITS - 1 - man_bits)) - 1;
    let bias = (exp_mask >> 1) as i32;
    let raw_exp = ((a >> man_bits) & exp_mask) as i32;
    let frac = a & ((1u64 << man_bits) - 1);
    // value = sig * 2^exp, sig an integer of exactly p bits (subnormals normalised).
    let (mut sig, mut exp) = if raw_exp == 0 {
        // frac != 0 here: zeros returned above.
        let shift = frac.leading_zeros() - (63 - man_bits);
        (
            u128::from(frac << shift),
            1 - bias - (man_bits + shift) as i32,
        )
    } else {
        (
            u128::from(frac | (1u64 << man_bits)),
            raw_exp - bias - man_bits as i32,
        )
    };
    if exp & 1 != 0 {
        sig <<= 1;
        exp -= 1;
    }
    // sig < 2^(p+1); shifted by 2k it has at most p + 1 + 2k <= 112 bits, and its root at
    // least (p + 2k) / 2 >= p + 2: a guard bit and a round bit beyond the precision.
    let k = (man_bits + 6) / 2;
    let n = sig << (2 * k);
    let q = n.isqrt();
    let sticky = u128::from(q * q != n);
    let r = T::F::from_u128_r((q << 1) | sticky, rm.apfloat());
    let value = r.value.scalbn(exp / 2 - k as i32 - 1);
    (bits::<T>(value), flags(r.status))
}

/// FSGNJ (`op` 0), FSGNJN (1), FSGNJX (2): sign bit games, no NaN canonicalisation.
pub(crate) fn sgnj<T: Format>(a: u64, b: u64, op: u32) -> u64 {
    let sign = 1u64 << (T::BITS - 1);
    let s = match op {
        0 => b & sign,
        1 => !b & sign,
        _ => (a ^ b) & sign,
    };
    (a & !sign) | s
}

/// FMIN (`max` false) / FMAX (true): IEEE 754-2019 minimumNumber / maximumNumber, with -0
/// below +0; both NaN gives the canonical NaN; a signalling NaN input raises NV.
pub(crate) fn min_max<T: Format>(a: u64, b: u64, max: bool) -> Out {
    let (x, y) = (from_bits::<T>(a), from_bits::<T>(b));
    let nv = if x.is_signaling() || y.is_signaling() {
        flag::NV
    } else {
        0
    };
    let r = match (x.is_nan(), y.is_nan()) {
        (true, true) => T::CANONICAL_NAN,
        (true, false) => b,
        (false, true) => a,
        (false, false) => {
            let less = match x.partial_cmp(&y) {
                Some(Ordering::Less) => true,
                // Equal: only ±0 differ, and negative is the smaller.
                Some(Ordering::Equal) => x.is_negative(),
                _ => false,
            };
            if less != max {
                a
            } else {
                b
            }
        }
    };
    (r, nv)
}

/// The comparisons (§11.8): FEQ (`op` 2) is quiet (NV only for a signalling NaN), FLT (1)
/// and FLE (0) signal on any NaN. Returns 1 or 0.
pub(crate) fn compare<T: Format>(a: u64, b: u64, op: u32) -> Out {
    let (x, y) = (from_bits::<T>(a), from_bits::<T>(b));
    if x.is_nan() || y.is_nan() {
        let nv = op != 2 || x.is_signaling() || y.is_signaling();
        return (0, if nv { flag::NV } else { 0 });
    }
    let ord = x.partial_cmp(&y);
    let r = match op {
        2 => ord == Some(Ordering::Equal),
        1 => ord == Some(Ordering::Less),
        _ => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
    };
    (u64::from(r), 0)
}

/// FCLASS (§11.9, Table 11.5): one bit set out of ten.
pub(crate) fn class<T: Format>(a: u64) -> u64 {
    let v = from_bits::<T>(a);
    let neg = v.is_negative();
    let bit = if v.is_nan() {
        if v.is_signaling() {
            8
        } else {
            9
        }
    } else if v.is_infinite() {
        if neg {
            0
        } else {
            7
        }
    } else if v.is_zero() {
        if neg {
            3
        } else {
            4
        }
    } else if v.is_denormal() {
        if neg {
            2
        } else {
            5
        }
    } else if neg {
        1
    } else {
        6
    };
    1 << bit
}

/// The integer a FCVT.{W,WU,L,LU} produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Int {
    /// Signed 32-bit (W).
    W,
    /// Unsigned 32-bit (WU).
    Wu,
    /// Signed 64-bit (L).
    L,
    /// Unsigned 64-bit (LU).
    Lu,
}

impl Int {
    fn range(self) -> (i128, i128) {
        match self {
            Int::W => (i32::MIN.into(), i32::MAX.into()),
            Int::Wu => (0, u32::MAX.into()),
            Int::L => (i64::MIN.into(), i64::MAX.into()),
            Int::Lu => (0, u64::MAX.into()),
        }
    }

    /// The value as written to an integer register: 32-bit results are sign-extended, the
    /// unsigned ones too (§11.7).
    fn to_reg(self, v: i128) -> u64 {
        match self {
            Int::W | Int::Wu => v as u32 as i32 as i64 as u64,
            Int::L | Int::Lu => v as u64,
        }
    }
}

/// FCVT.{W,WU,L,LU}.{S,D}: rounds with `rm`; out of range saturates with NV (NaN gives the
/// largest value); in range but not exact raises NX. Returns the register value.
pub(crate) fn to_int<T: Format>(a: u64, int: Int, rm: Rm) -> Out {
    let v = from_bits::<T>(a);
    let (lo, hi) = int.range();
    if v.is_nan() {
        return (int.to_reg(hi), flag::NV);
    }
    // 128 bits hold every in-range result with room to see it out of range.
    let r = v.to_i128_r(128, rm.apfloat(), &mut false);
    let out_of_range = |x: i128| x < lo || x > hi;
    if r.status.contains(Status::INVALID_OP) || out_of_range(r.value) {
        let sat = if v.is_negative() { lo } else { hi };
        return (int.to_reg(sat), flag::NV);
    }
    (int.to_reg(r.value), flags(r.status))
}

/// FCVT.{S,D}.{W,WU,L,LU}: `x` is the integer register; the 32-bit forms use its low half.
pub(crate) fn from_int<T: Format>(x: u64, int: Int, rm: Rm) -> Out {
    let v: i128 = match int {
        Int::W => i128::from(x as i32),
        Int::Wu => i128::from(x as u32),
        Int::L => i128::from(x as i64),
        Int::Lu => i128::from(x),
    };
    let r = T::F::from_i128_r(v, rm.apfloat());
    (bits::<T>(r.value), flags(r.status))
}

/// FCVT.S.D: narrowing, rounded with `rm` (tininess after rounding, as everywhere).
pub(crate) fn d_to_s(a: u64, rm: Rm) -> Out {
    let v = from_bits::<D>(a);
    let r: StatusAnd<Single> = v.convert_r(rm.apfloat(), &mut false);
    finish::<S>(r, || v.convert_r(rm.apfloat(), &mut false))
}

/// FCVT.D.S: exact; a signalling NaN raises NV.
pub(crate) fn s_to_d(a: u64) -> Out {
    let v = from_bits::<S>(a);
    if v.is_nan() {
        let nv = if v.is_signaling() { flag::NV } else { 0 };
        return (D::CANONICAL_NAN, nv);
    }
    let r: StatusAnd<Double> = v.convert(&mut false);
    (bits::<D>(r.value), flags(r.status))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: operands spread over every exponent, sign and NaN pattern.
    fn rng(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn same_s(ours: u64, host: f32) -> bool {
        if host.is_nan() {
            ours == S::CANONICAL_NAN
        } else {
            ours == u64::from(host.to_bits())
        }
    }

    fn same_d(ours: u64, host: f64) -> bool {
        if host.is_nan() {
            ours == D::CANONICAL_NAN
        } else {
            ours == host.to_bits()
        }
    }

    /// In round-to-nearest-even the host's IEEE arithmetic (SSE / NEON, and libm's
    /// correctly rounded `fma` and `sqrt`) is an independent reference for the values.
    #[test]
    fn rne_values_match_the_host_fpu() {
        let mut st = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..100_000 {
            let (a, b, c) = (rng(&mut st), rng(&mut st), rng(&mut st));
            let (fa, fb, fc) = (
                f32::from_bits(a as u32),
                f32::from_bits(b as u32),
                f32::from_bits(c as u32),
            );
            let (sa, sb, sc) = (a & 0xffff_ffff, b & 0xffff_ffff, c & 0xffff_ffff);
            assert!(
                same_s(add::<S>(sa, sb, Rm::Rne).0, fa + fb),
                "{sa:#x}+{sb:#x}"
            );
            assert!(
                same_s(mul::<S>(sa, sb, Rm::Rne).0, fa * fb),
                "{sa:#x}*{sb:#x}"
            );
            assert!(
                same_s(div::<S>(sa, sb, Rm::Rne).0, fa / fb),
                "{sa:#x}/{sb:#x}"
            );
            assert!(same_s(sqrt::<S>(sa, Rm::Rne).0, fa.sqrt()), "sqrt {sa:#x}");
            assert!(same_s(fma::<S>(sa, sb, sc, Rm::Rne).0, fa.mul_add(fb, fc)));
            let (da, db, dc) = (f64::from_bits(a), f64::from_bits(b), f64::from_bits(c));
            assert!(same_d(add::<D>(a, b, Rm::Rne).0, da + db), "{a:#x}+{b:#x}");
            assert!(same_d(mul::<D>(a, b, Rm::Rne).0, da * db), "{a:#x}*{b:#x}");
            assert!(same_d(div::<D>(a, b, Rm::Rne).0, da / db), "{a:#x}/{b:#x}");
            assert!(same_d(sqrt::<D>(a, Rm::Rne).0, da.sqrt()), "sqrt {a:#x}");
            assert!(same_d(fma::<D>(a, b, c, Rm::Rne).0, da.mul_add(db, dc)));
            assert!(same_s(d_to_s(a, Rm::Rne).0, da as f32), "{a:#x} as f32");
        }
    }

    /// The directed modes, RMM and NX against the host: the host gives the RNE result `n` and
    /// the exact error `e` of it (TwoSum for add, a fused multiply-add for the product, the
    /// residual for the quotient and the root), so the exact value is `n + e` and every mode's
    /// result follows: `e == 0` is exact (no NX, all modes give `n`), `e > 0` puts the exact
    /// value between `n` and its successor, a tie has `|e|` half an ulp. Operands and results
    /// stay in the normal range, where those error terms are exact.
    #[test]
    fn every_rounding_mode_and_nx_match_the_exact_error() {
        let mut st = 0x1319_8a2e_0370_7344;
        let mut checked = 0;
        for _ in 0..100_000 {
            // Exponents within +-2^8 of 1.0 keep everything normal.
            let mut val = || {
                let r = rng(&mut st);
                (r & 0x800f_ffff_ffff_ffff) | ((0x3ff - 256 + (r >> 52) % 512) << 52)
            };
            let (a, b) = (val(), val());
            let (fa, fb) = (f64::from_bits(a), f64::from_bits(b));
            let abs_a = f64::from_bits(a & !(1 << 63));
            // Results in the order RNE, RTZ, RDN, RUP, RMM.
            let modes = [Rm::Rne, Rm::Rtz, Rm::Rdn, Rm::Rup, Rm::Rmm];
            let cases: [(&str, f64, f64, [Out; 5]); 4] = [
                {
                    let n = fa + fb;
                    let bb = n - fa;
                    let e = (fa - (n - bb)) + (fb - bb);
                    let m = |rm| add::<D>(a, b, rm);
                    ("add", n, e, modes.map(m))
                },
                {
                    let n = fa * fb;
                    let e = fa.mul_add(fb, -n);
                    let m = |rm| mul::<D>(a, b, rm);
                    ("mul", n, e, modes.map(m))
                },
                {
                    // a = q*b + r exactly; the exact quotient is q + r/b.
                    let n = fa / fb;
                    let e = (-n).mul_add(fb, fa) / fb;
                    let m = |rm| div::<D>(a, b, rm);
                    ("div", n, e, modes.map(m))
                },
                {
                    // a = s^2 + r; the exact root is above s iff r > 0 (never a tie).
                    let n = abs_a.sqrt();
                    let e = (-n).mul_add(n, abs_a);
                    let a = a & !(1 << 63);
                    let m = |rm| sqrt::<D>(a, rm);
                    ("sqrt", n, e, modes.map(m))
                },
            ];
            for (op, n, e, [rne, rtz, rdn, rup, rmm]) in cases {
                let nb = n.to_bits();
                if e == 0.0 {
                    for r in [rne, rtz, rdn, rup, rmm] {
                        assert_eq!(r, (nb, 0), "{op} {a:#x} {b:#x} exact");
                    }
                    continue;
                }
                checked += 1;
                let (down, up) = if e > 0.0 {
                    (n, n.next_up())
                } else {
                    (n.next_down(), n)
                };
                let toward_zero = if n > 0.0 { down } else { up };
                let away = if n > 0.0 { up } else { down };
                let tie = e.abs() == (up - down) / 2.0;
                let nearest_away = if tie { away } else { n };
                let want = |v: f64| (v.to_bits(), flag::NX);
                let ctx = format!("{op} {a:#x} {b:#x}");
                assert_eq!(rne, want(n), "RNE {ctx}");
                assert_eq!(rtz, want(toward_zero), "RTZ {ctx}");
                assert_eq!(rdn, want(down), "RDN {ctx}");
                assert_eq!(rup, want(up), "RUP {ctx}");
                assert_eq!(rmm, want(nearest_away), "RMM {ctx}");
            }
        }
        assert!(checked > 100_000, "{checked} inexact cases");
    }

    /// Square roots of values near 1 and of every binary32 subnormal exponent: the result
    /// squared brackets the operand, and NX is set exactly when it is not exact.
    #[test]
    fn sqrt_is_exact_only_for_squares() {
        for sig in [1u32, 4, 9, 0x40_0000, 0x7f_ffff] {
            let (r, fl) = sqrt::<S>(u64::from(sig), Rm::Rne);
            let exact =
                f64::from(f32::from_bits(r as u32)).powi(2) == f64::from(f32::from_bits(sig));
            assert_eq!(fl == 0, exact, "{sig:#x}");
        }
        // 2^-1074 * 9 = (3 * 2^-537)^2: exact.
        assert_eq!(
            sqrt::<D>(9, Rm::Rne),
            ((3f64 * 2f64.powi(-537)).to_bits(), 0)
        );
    }
}
