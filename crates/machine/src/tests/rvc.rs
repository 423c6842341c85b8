//! The C extension on the hart: every compressed instruction against its 32-bit counterpart
//! (pairs assembled by GNU as, [`rvc_pairs`]), reserved encodings, HINTs, IALIGN = 16 jumps and
//! links, page-straddling fetch, and the decode cache with mixed-length and rewritten code.

#[path = "rvc_pairs.rs"]
mod rvc_pairs;

use super::*;
use crate::decode::decode;
use rvc_pairs::PAIRS;

/// Writes halfwords at `addr`.
fn put16(m: &Machine, addr: u64, code: &[u16]) {
    for (i, h) in code.iter().enumerate() {
        m.memory()
            .write_obj(*h, GuestAddress(addr + 2 * i as u64))
            .unwrap();
    }
}

/// A 32-bit instruction as its two halfwords (little-endian order in memory).
fn halves(w: u32) -> [u16; 2] {
    [w as u16, (w >> 16) as u16]
}

#[test]
fn gnu_as_pairs_decode_alike() {
    for &(c, w, asm) in PAIRS {
        assert_eq!(
            decode(u32::from(c)),
            decode(w),
            "{asm} ({c:#06x} vs {w:#010x})"
        );
        // The high half (the next instruction) plays no part.
        assert_eq!(decode(u32::from(c) | 0xabcd_0000), decode(w), "{asm}");
    }
}

/// One run of a single instruction from a given register file; what can be compared.
struct Outcome {
    x: [u64; 32],
    pc: u64,
    trap: Option<(u64, u64, u64)>,
    mem: Vec<u8>,
}

/// Prefixes that put the instruction under test at CODE (fetched through the slow path, no
/// fetch page cached yet), CODE + 2 after a C.NOP, and CODE + 4 after a 32-bit NOP (both
/// through the fast path, at a 2- and a 4-aligned offset).
const PREFIXES: [&[u16]; 3] = [&[], &[0x0001], &[0x0013, 0x0000]];

/// Runs `prefix` (no-ops) then `code` from CODE on `m` (reused: fresh registers, data and
/// pc; the decode caches stay, as they may); returns the outcome and where `code` was.
fn run_one(m: &mut Machine, prefix: &[u16], code: &[u16], regs: &[u64; 32]) -> (Outcome, u64) {
    if prefix.is_empty() {
        // Forget the fetch page: the slow path.
        m.hart.flush_tlb();
    }
    m.set_pc(CODE);
    put16(m, CODE, prefix);
    let at = CODE + 2 * prefix.len() as u64;
    put16(m, at, code);
    let pattern: Vec<u8> = (0..0x8400u32).map(|i| (i * 7 + 3) as u8).collect();
    m.memory()
        .write_slice(&pattern, GuestAddress(DATA))
        .unwrap();
    for (k, &v) in regs.iter().enumerate().skip(1) {
        m.set_reg(k, v);
    }
    m.hart.scause = u64::MAX;
    if !prefix.is_empty() {
        step(m, 1);
    }
    assert_eq!(m.pc(), at);
    step(m, 1);
    let trap = (m.pc() == HANDLER).then_some((m.hart.scause, m.hart.stval, m.hart.sepc));
    let mut mem = vec![0; pattern.len()];
    m.memory().read_slice(&mut mem, GuestAddress(DATA)).unwrap();
    let o = Outcome {
        x: std::array::from_fn(|k| m.reg(k)),
        pc: m.pc(),
        trap,
        mem,
    };
    (o, at)
}

/// Register files: pointers into DATA (memory accesses succeed), pseudo-random values
/// (they fault, the same way for both lengths), and zeros (branches taken).
fn register_files() -> Vec<[u64; 32]> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let random = std::array::from_fn(|_| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    });
    vec![
        std::array::from_fn(|k| DATA + 0x400 * k as u64),
        random,
        [0; 32],
    ]
}

#[test]
fn every_compressed_instruction_executes_as_its_32_bit_counterpart() {
    let (mut m_short, mut m_long) = (machine(), machine());
    let files = register_files();
    let cases = files
        .iter()
        .flat_map(|r| PREFIXES.iter().map(move |p| (r, p)));
    for (regs, prefix) in cases {
        for &(c, w, asm) in PAIRS {
            let (short, at) = run_one(&mut m_short, prefix, &[c], regs);
            let (long, _) = run_one(&mut m_long, prefix, &halves(w), regs);
            let what = format!("{asm} ({c:#06x} vs {w:#010x}) at {at:#x} from {regs:#x?}");
            let mnemonic = asm.split(' ').next().unwrap();
            let mut expect_x = long.x;
            match (&long.trap, mnemonic) {
                (Some((cause, tval, epc)), _) => {
                    let tval = if *cause == cause::ILLEGAL_INSN {
                        // The hart reports the 16 bits of an illegal compressed instruction.
                        assert_eq!(*tval, u64::from(w), "{what}");
                        u64::from(c)
                    } else {
                        *tval
                    };
                    assert_eq!(short.trap, Some((*cause, tval, *epc)), "{what}");
                }
                (None, "c.j" | "c.jr") => assert_eq!(short.pc, long.pc, "{what}"),
                (None, "c.jalr") => {
                    assert_eq!(short.pc, long.pc, "{what}");
                    assert_eq!((short.x[1], long.x[1]), (at + 2, at + 4), "{what}");
                    expect_x[1] = at + 2;
                }
                (None, "c.beqz" | "c.bnez") => {
                    let rs1 = (8 + ((c >> 7) & 7)) as usize;
                    let taken = (regs[rs1] == 0) == (mnemonic == "c.beqz");
                    let fall = (at + 2, at + 4);
                    if taken {
                        assert_eq!(short.pc, long.pc, "{what}");
                    } else {
                        assert_eq!((short.pc, long.pc), fall, "{what}");
                    }
                }
                (None, _) => assert_eq!((short.pc, long.pc), (at + 2, at + 4), "{what}"),
            }
            assert_eq!(short.x, expect_x, "{what}");
            assert!(short.mem == long.mem, "{what}: memory differs");
        }
    }
}

#[test]
fn reserved_compressed_encodings_trap_with_their_16_bits_in_stval() {
    for h in [
        0x0000u16, // the all-zero halfword
        0x0004,    // C.ADDI4SPN with nzuimm = 0
        0x8000,    // quadrant 0, funct3 100
        0x2001,    // C.ADDIW with rd = x0
        0x6101,    // C.ADDI16SP with nzimm = 0
        0x6081,    // C.LUI with nzimm = 0
        0x4002,    // C.LWSP with rd = x0
        0x6002,    // C.LDSP with rd = x0
        0x8002,    // C.JR with rs1 = x0
        0x9c41,    // reserved C.SUBW/C.ADDW neighbours
        0x9c61,
    ] {
        // Through the slow path, then the fast path at a 2- and a 4-aligned address; followed
        // by a nonzero halfword.
        for prefix in PREFIXES {
            let mut m = machine();
            put16(&m, CODE, prefix);
            let at = CODE + 2 * prefix.len() as u64;
            put16(&m, at, &[h, 0xffff]);
            step(&mut m, 1 + usize::from(!prefix.is_empty()));
            assert_eq!(
                (m.pc(), m.hart.scause, m.hart.stval, m.hart.sepc),
                (HANDLER, cause::ILLEGAL_INSN, u64::from(h), at),
                "{h:#06x} at {at:#x}"
            );
        }
    }
}

#[test]
fn hints_execute_as_no_ops() {
    for h in [
        0x0005u16, // C.NOP with imm = 1
        0x0081,    // C.ADDI ra, 0
        0x4005,    // C.LI x0, 1
        0x6005,    // C.LUI x0, 1
        0x800a,    // C.MV x0, sp
        0x900a,    // C.ADD x0, sp
        0x0006,    // C.SLLI x0, 1
        0x0082,    // C.SLLI ra, 0
        0x8001,    // C.SRLI s0, 0
        0x8401,    // C.SRAI s0, 0
    ] {
        let regs: [u64; 32] = std::array::from_fn(|k| 0x1111 * k as u64 + 0xf000_0000_0000_0000);
        let (o, at) = run_one(&mut machine(), PREFIXES[2], &[h], &regs);
        assert_eq!((o.pc, o.trap), (at + 2, None), "{h:#06x}");
        let mut expect = regs;
        expect[0] = 0;
        assert_eq!(o.x, expect, "{h:#06x}");
    }
}

/// c.li a0, imm (rd = x10): 010 imm[5] 01010 imm[4:0] 01.
fn c_li_a0(imm: u16) -> u16 {
    0x4001 | (10 << 7) | ((imm & 0x20) << 7) | ((imm & 0x1f) << 2)
}

#[test]
fn mixed_length_code_runs_with_32_bit_instructions_at_2_aligned_addresses() {
    let mut m = machine();
    // CODE:    c.li a0, 1
    // CODE+2:  addi a0, a0, 5        (32-bit, 2-aligned)
    // CODE+6:  c.addi a0, 3 (0x050d)
    // CODE+8:  jal ra, -6            (back to CODE+2, links CODE+12)
    let jal_back = jal(1, -6);
    let mut code = vec![c_li_a0(1)];
    code.extend(halves(addi(10, 10, 5)));
    code.push(0x050d);
    code.extend(halves(jal_back));
    put16(&m, CODE, &code);
    step(&mut m, 4);
    assert_eq!(m.reg(10), 9);
    assert_eq!(m.reg(1), CODE + 12, "link = pc + 4 of the 32-bit jal");
    assert_eq!(m.pc(), CODE + 2);
    step(&mut m, 2);
    assert_eq!(m.reg(10), 17);
    assert_eq!(m.hart.instret, 6);
}

#[test]
fn jumps_and_branches_to_2_aligned_targets_are_legal_and_links_are_pc_plus_2() {
    // jal to CODE+6 (2-aligned): no misaligned exception.
    let mut m = machine();
    put(&m, CODE, &[jal(1, 6)]);
    put16(&m, CODE + 6, &[c_li_a0(7)]);
    step(&mut m, 2);
    assert_eq!((m.reg(1), m.reg(10), m.pc()), (CODE + 4, 7, CODE + 8));
    // beq to CODE+2.
    let mut m = machine();
    put(&m, CODE, &[beq(0, 0, 2)]);
    step(&mut m, 1);
    assert_eq!(m.pc(), CODE + 2);
    // jalr to an odd address clears bit 0; c.jalr links pc + 2.
    let mut m = machine();
    m.set_reg(5, CODE + 0x41);
    put(&m, CODE, &[jalr(0, 5, 0)]);
    step(&mut m, 1);
    assert_eq!(m.pc(), CODE + 0x40);
    let mut m = machine();
    m.set_reg(5, CODE + 0x40);
    put16(&m, CODE + 2, &[0x9282]); // c.jalr t0
    m.set_pc(CODE + 2);
    step(&mut m, 1);
    assert_eq!((m.pc(), m.reg(1)), (CODE + 0x40, CODE + 4));
    // sepc keeps bit 1 (IALIGN = 16).
    assert!(m.hart.csr_write(csr::SEPC, CODE + 3));
    assert_eq!(m.hart.sepc, CODE + 2);
}

#[test]
fn a_32_bit_instruction_may_straddle_two_physical_pages() {
    let mut m = machine();
    let at = CODE + 0xffe;
    put16(&m, at, &halves(addi(10, 0, 0x123)));
    m.set_pc(at);
    step(&mut m, 1);
    assert_eq!((m.reg(10), m.pc()), (0x123, CODE + 0x1002));
}

/// Code at virtual pages VA and VA + 4 KiB, mapped to physical pages that are not adjacent.
fn straddling(second_mapped: bool) -> Machine {
    let m = paged();
    let (p0, p1) = (DATA + 0x3000, DATA + 0x1000);
    map4k(&m, VA, p0, V | R | X | A);
    if second_mapped {
        map4k(&m, VA + 0x1000, p1, V | R | X | A);
    }
    let [lo, hi] = halves(addi(10, 0, 0x321));
    put16(&m, p0 + 0xffc, &[c_li_a0(5), lo]);
    put16(&m, p1, &[hi]);
    m
}

#[test]
fn a_straddling_fetch_translates_both_halves() {
    let mut m = straddling(true);
    m.set_pc(VA + 0xffc);
    step(&mut m, 1);
    assert_eq!((m.reg(10), m.pc()), (5, VA + 0xffe));
    step(&mut m, 1);
    assert_eq!((m.reg(10), m.pc()), (0x321, VA + 0x1002));
    assert_eq!(m.hart.instret, 2);
}

#[test]
fn a_page_fault_on_the_second_half_reports_the_second_page() {
    let mut m = straddling(false);
    m.set_pc(VA + 0xffc);
    step(&mut m, 2);
    assert_eq!(
        (m.pc(), m.hart.scause, m.hart.stval, m.hart.sepc),
        (HANDLER, cause::INSN_PAGE_FAULT, VA + 0x1000, VA + 0xffe)
    );
    assert_eq!(m.reg(10), 5, "the compressed instruction before it ran");
    // A compressed instruction in the last halfword needs no second page.
    let mut m = straddling(false);
    let p0 = DATA + 0x3000;
    put16(&m, p0 + 0xffe, &[c_li_a0(9)]);
    m.set_pc(VA + 0xffe);
    step(&mut m, 1);
    assert_eq!((m.reg(10), m.pc()), (9, VA + 0x1000));
}

#[test]
fn the_decode_cache_follows_code_rewritten_between_lengths() {
    let mut m = machine();
    // c.li a0, 1; c.j -2 (0xbffd)
    put16(&m, CODE, &[c_li_a0(1), 0xbffd]);
    step(&mut m, 2);
    assert_eq!((m.reg(10), m.pc()), (1, CODE));
    // The same address now holds a 32-bit instruction (overwriting the c.j too).
    put(&m, CODE, &[addi(10, 0, 7)]);
    step(&mut m, 1);
    assert_eq!((m.reg(10), m.pc()), (7, CODE + 4));
    // And back to compressed: only the low half changes; the high half is stale.
    put16(&m, CODE, &[c_li_a0(3)]);
    m.set_pc(CODE);
    step(&mut m, 1);
    assert_eq!((m.reg(10), m.pc()), (3, CODE + 2));
    // The halfword after a compressed instruction changing does not disturb it.
    put16(&m, CODE + 2, &[0x0001]);
    m.set_pc(CODE);
    step(&mut m, 1);
    assert_eq!((m.reg(10), m.pc()), (3, CODE + 2));
}
