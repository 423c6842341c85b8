#!/usr/bin/env python3
"""Regenerates crates/machine/src/tests/rvc_pairs.rs: every RV64C instruction form, with
operands that set each immediate bit on its own, assembled by GNU as twice: compressed
(`.option rvc`) and as the 32-bit instruction it stands for (`.option norvc`). The hart's
tests check that both encodings behave the same, so the table is an oracle independent of
the hart's expander. Needs riscv64-linux-gnu-as/objdump (binutils-riscv64-linux-gnu); not
run by the tests, the output is committed.

Usage: scripts/gen-rvc-pairs.py > crates/machine/src/tests/rvc_pairs.rs
"""
import os
import re
import subprocess
import sys
import tempfile

CREG = ["s0", "s1", "a0", "a1", "a2", "a3", "a4", "a5"]  # x8..x15
FCREG = ["fs0", "fs1", "fa0", "fa1", "fa2", "fa3", "fa4", "fa5"]


def bits(lo, hi, scale, signed=False, nonzero=True):
    """Immediates with one bit set each (bit lo..hi, times 1), plus extremes."""
    vals = [1 << b for b in range(lo, hi + 1)]
    top = (1 << (hi + 1)) - (1 << lo)
    if signed:
        vals = vals[:-1] + [-(1 << hi), -(1 << lo), (1 << hi) - (1 << lo)]
    else:
        vals.append(top)
    if not nonzero:
        vals.append(0)
    return vals


def pairs():
    p = []
    # Quadrant 0.
    for rd, imm in zip(["s0", "a5"] * 9, bits(2, 9, 1)):
        p.append((f"c.addi4spn {rd}, sp, {imm}", f"addi {rd}, sp, {imm}"))
    for k, imm in enumerate(bits(3, 7, 1, nonzero=False)):
        a, b = CREG[k % 8], CREG[(k + 3) % 8]
        fa = FCREG[k % 8]
        p.append((f"c.ld {a}, {imm}({b})", f"ld {a}, {imm}({b})"))
        p.append((f"c.sd {a}, {imm}({b})", f"sd {a}, {imm}({b})"))
        p.append((f"c.fld {fa}, {imm}({b})", f"fld {fa}, {imm}({b})"))
        p.append((f"c.fsd {fa}, {imm}({b})", f"fsd {fa}, {imm}({b})"))
    for k, imm in enumerate(bits(2, 6, 1, nonzero=False)):
        a, b = CREG[(k + 1) % 8], CREG[(k + 5) % 8]
        p.append((f"c.lw {a}, {imm}({b})", f"lw {a}, {imm}({b})"))
        p.append((f"c.sw {a}, {imm}({b})", f"sw {a}, {imm}({b})"))
    # Quadrant 1.
    p.append(("c.nop", "addi zero, zero, 0"))
    for k, imm in enumerate(bits(0, 5, 1, signed=True)):
        rd = ["ra", "t6", "a0", "s11"][k % 4]
        p.append((f"c.addi {rd}, {imm}", f"addi {rd}, {rd}, {imm}"))
        p.append((f"c.addiw {rd}, {imm}", f"addiw {rd}, {rd}, {imm}"))
        p.append((f"c.li {rd}, {imm}", f"addi {rd}, zero, {imm}"))
        a = CREG[k % 8]
        p.append((f"c.andi {a}, {imm}", f"andi {a}, {a}, {imm}"))
    p.append(("c.addiw a0, 0", "addiw a0, a0, 0"))
    p.append(("c.li a1, 0", "addi a1, zero, 0"))
    for imm in bits(4, 9, 1, signed=True):
        p.append((f"c.addi16sp sp, {imm}", f"addi sp, sp, {imm}"))
    for k, imm in enumerate(bits(0, 5, 1, signed=True)):
        rd = ["ra", "t6", "a0", "s11", "gp", "tp"][k % 6]
        imm20 = imm & 0xFFFFF
        p.append((f"c.lui {rd}, {imm20:#x}", f"lui {rd}, {imm20:#x}"))
    for k, sh in enumerate(bits(0, 5, 1)):
        a = CREG[(k + 2) % 8]
        rd = ["ra", "t6", "a0", "s11", "gp", "tp", "sp"][k % 7]
        p.append((f"c.srli {a}, {sh}", f"srli {a}, {a}, {sh}"))
        p.append((f"c.srai {a}, {sh}", f"srai {a}, {a}, {sh}"))
        p.append((f"c.slli {rd}, {sh}", f"slli {rd}, {rd}, {sh}"))
    for k in range(8):
        a, b = CREG[k], CREG[(k * 3 + 1) % 8]
        for op in ["sub", "xor", "or", "and", "subw", "addw"]:
            p.append((f"c.{op} {a}, {b}", f"{op} {a}, {a}, {b}"))
    for off in bits(1, 11, 1, signed=True):
        p.append((f"c.j .{off:+d}", f"jal zero, .{off:+d}"))
    for k, off in enumerate(bits(1, 8, 1, signed=True)):
        a = CREG[k % 8]
        p.append((f"c.beqz {a}, .{off:+d}", f"beq {a}, zero, .{off:+d}"))
        p.append((f"c.bnez {a}, .{off:+d}", f"bne {a}, zero, .{off:+d}"))
    # Quadrant 2.
    for k, imm in enumerate(bits(3, 8, 1, nonzero=False)):
        rd = ["ra", "t6", "a0", "s11", "gp", "tp", "sp"][k % 7]
        f = ["ft0", "ft11", "fa0", "fs11"][k % 4]
        p.append((f"c.ldsp {rd}, {imm}(sp)", f"ld {rd}, {imm}(sp)"))
        p.append((f"c.sdsp {rd}, {imm}(sp)", f"sd {rd}, {imm}(sp)"))
        p.append((f"c.fldsp {f}, {imm}(sp)", f"fld {f}, {imm}(sp)"))
        p.append((f"c.fsdsp {f}, {imm}(sp)", f"fsd {f}, {imm}(sp)"))
    for k, imm in enumerate(bits(2, 7, 1, nonzero=False)):
        rd = ["ra", "t6", "a0", "s11", "gp", "tp", "sp"][k % 7]
        p.append((f"c.lwsp {rd}, {imm}(sp)", f"lw {rd}, {imm}(sp)"))
        p.append((f"c.swsp {rd}, {imm}(sp)", f"sw {rd}, {imm}(sp)"))
    for k, (a, b) in enumerate([("ra", "sp"), ("t6", "a0"), ("s11", "ra"), ("a0", "t6"), ("sp", "s0")]):
        p.append((f"c.jr {a}", f"jalr zero, 0({a})"))
        p.append((f"c.jalr {a}", f"jalr ra, 0({a})"))
        p.append((f"c.mv {a}, {b}", f"add {a}, zero, {b}"))
        p.append((f"c.add {a}, {b}", f"add {a}, {a}, {b}"))
    p.append(("c.ebreak", "ebreak"))
    return p


def assemble(lines, rvc):
    with tempfile.TemporaryDirectory() as d:
        src, obj = os.path.join(d, "t.s"), os.path.join(d, "t.o")
        with open(src, "w") as f:
            f.write(".option rvc\n" if rvc else ".option norvc\n")
            # One section per instruction keeps pc-relative targets at the same offset.
            for k, line in enumerate(lines):
                f.write(f".section .text.{k},\"ax\"\n{line}\n")
        subprocess.run(["riscv64-linux-gnu-as", "-march=rv64gc", "-mno-relax", src, "-o", obj],
                       check=True)
        out = subprocess.run(["riscv64-linux-gnu-objdump", "-d", "-M", "no-aliases", obj],
                             check=True, capture_output=True, text=True).stdout
    words = re.findall(r"^\s+0:\s+([0-9a-f]+)\s", out, re.M)
    assert len(words) == len(lines), (len(words), len(lines))
    width = 4 if rvc else 8
    for w, line in zip(words, lines):
        assert len(w) == width, f"{line!r} assembled to {w}"
    return [int(w, 16) for w in words]


def main():
    p = pairs()
    c = assemble([a for a, _ in p], True)
    w = assemble([b for _, b in p], False)
    print("// @generated by scripts/gen-rvc-pairs.py from GNU as output; do not edit.")
    print("//! (compressed, 32-bit equivalent, compressed assembly) triples.")
    print()
    print("pub(super) const PAIRS: &[(u16, u32, &str)] = &[")
    for (a, _), ci, wi in zip(p, c, w):
        print(f"    ({ci:#06x}, {wi:#010x}, {a!r}),".replace("'", '"'))
    print("];")


if __name__ == "__main__":
    sys.exit(main())
