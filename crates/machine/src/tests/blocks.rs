//! The block engine (`hart::blocks`) against the one-instruction-at-a-time interpreter
//! (`run_batch::<true>`, the tracing path): random programs, mixed 16/32-bit, with loads,
//! stores that rewrite the code, branches, jumps and traps, run by both; the final states must
//! be identical. Plus targeted cases: a store rewriting a later instruction of the running
//! block, code written behind the hart's back (DMA) and FENCE.I, budgets that end a batch
//! mid-block, traps mid-block, loops that run a block again without a lookup.

use super::*;

/// xorshift64: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const CODE_LEN: u64 = 0x2000;

/// Random code: compressed halfwords and 32-bit words of the integer, memory, branch, jump,
/// fence and atomic opcodes with random fields (no SYSTEM opcode: `time` reads and SBI calls
/// would differ between two runs for reasons other than the engine).
fn random_code(rng: &mut Rng) -> Vec<u16> {
    const OPCODES: [u32; 13] = [
        0x03, 0x23, 0x13, 0x33, 0x3b, 0x1b, 0x37, 0x17, 0x63, 0x6f, 0x67, 0x0f, 0x2f,
    ];
    let mut code = Vec::new();
    while (code.len() as u64) < CODE_LEN / 2 {
        if rng.below(10) < 4 {
            let mut h = rng.next() as u16;
            if h & 3 == 3 {
                h &= !1;
            }
            code.push(h);
        } else {
            let op = OPCODES[rng.below(OPCODES.len() as u64) as usize];
            let mut w = (rng.next() as u32 & !0x7f) | op;
            let funct3 = (w >> 12) & 7;
            // Mostly valid encodings: legal funct7 / funct5 values.
            let f7 = [0u32, 0x20, 1][rng.below(3) as usize];
            match op {
                0x33 | 0x3b => w = (w & 0x01ff_ffff) | f7 << 25,
                0x13 | 0x1b if funct3 == 1 || funct3 == 5 => {
                    w = (w & 0x01ff_ffff) | (f7 & 0x20) << 25
                }
                0x2f => {
                    let f5 = [0u32, 1, 2, 3, 4, 8, 0xc, 0x10, 0x14, 0x18, 0x1c];
                    let f5 = f5[rng.below(f5.len() as u64) as usize];
                    w = (w & 0x01f0_8fff) | (2 + (w >> 12 & 1)) << 12 | f5 << 27;
                }
                // Keep branch/jump targets inside the code: small offsets.
                0x63 => w &= 0x01ff_ffff,
                0x6f => w &= 0x01f0_0fff,
                _ => {}
            }
            code.push(w as u16);
            code.push((w >> 16) as u16);
        }
    }
    code
}

/// The trap handler: resumes 2 bytes past the trapping instruction (into the middle of a
/// 32-bit one, maybe: that is just more random code), wrapped into the code area.
fn handler() -> Vec<u32> {
    prog(&[
        vec![
            csrrs(31, csr::SEPC as u32, 0),
            addi(31, 31, 2),
            slli(31, 31, 51),
            srli(31, 31, 51),
        ],
        li(30, CODE),
        vec![add(31, 31, 30), csrrw(0, csr::SEPC as u32, 31), SRET],
    ])
}

fn setup(rng: &mut Rng, code: &[u16], mmu: bool) -> Machine {
    let mut m = if mmu { paged() } else { machine() };
    for (i, h) in code.iter().enumerate() {
        m.memory()
            .write_obj(*h, GuestAddress(CODE + 2 * i as u64))
            .unwrap();
    }
    put(&m, HANDLER, &handler());
    for k in 1..32 {
        let v = match rng.below(4) {
            // Pointers into data, and into the code (stores there rewrite it).
            0 => DATA + rng.below(0x1000) * 8,
            1 | 2 => CODE + rng.below(CODE_LEN / 8) * 8,
            _ => rng.next(),
        };
        m.set_reg(k, v);
    }
    m
}

fn state(m: &Machine) -> (Vec<u64>, u64, u64, u64, u64, u64, Vec<u8>) {
    let x = (0..32).map(|k| m.reg(k)).collect();
    let mut mem = vec![0; (DATA + 0x9000 - CODE) as usize];
    m.memory().read_slice(&mut mem, GuestAddress(CODE)).unwrap();
    let h = &m.hart;
    (x, h.pc, h.instret, h.scause, h.stval, h.sepc, mem)
}

#[test]
fn blocks_and_the_interpreter_agree_on_random_programs() {
    const STEPS: u64 = 3000;
    let mut retired = 0;
    for seed in 1..=120u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let code = random_code(&mut rng);
        let mmu = seed % 3 == 0;
        let mut rng_a = Rng(rng.0);
        let mut rng_b = Rng(rng.0);
        let mut a = setup(&mut rng_a, &code, mmu);
        let mut b = setup(&mut rng_b, &code, mmu);
        let mut done = 0;
        while done < STEPS {
            done += a.hart.run_batch::<true>(1);
        }
        // The block engine in batches of random sizes, so that budgets end blocks early.
        let mut done = 0;
        while done < STEPS {
            let budget = (1 + rng.below(40)).min(STEPS - done);
            done += b.hart.run_batch::<false>(budget);
        }
        assert_eq!(done, STEPS);
        retired += a.hart.instret;
        assert!(
            state(&a) == state(&b),
            "seed {seed} (mmu {mmu}): pc {:#x} vs {:#x}, instret {} vs {}, scause {:#x} vs {:#x}",
            a.pc(),
            b.pc(),
            a.hart.instret,
            b.hart.instret,
            a.hart.scause,
            b.hart.scause,
        );
    }
    // Much of the work is the random code itself, not the trap handler (a trapping
    // instruction does not retire).
    let attempted = 120 * STEPS;
    let traps = attempted - retired;
    let random_retired = retired.saturating_sub(handler().len() as u64 * traps);
    assert!(random_retired > attempted / 4, "{random_retired}");
}

#[test]
fn a_store_into_the_running_block_is_seen_by_its_next_instructions() {
    let mut m = machine();
    // sw t1, 8(t0) overwrites the `addi a0, zero, 1` two instructions later, in the same
    // block, with `addi a0, zero, 2`.
    m.set_reg(5, CODE);
    m.set_reg(6, u64::from(addi(10, 0, 2)));
    put(
        &m,
        CODE,
        &[sw(5, 6, 8), addi(11, 0, 7), addi(10, 0, 1), addi(12, 0, 9)],
    );
    m.hart.run_batch::<false>(4);
    assert_eq!((m.reg(10), m.reg(11), m.reg(12)), (2, 7, 9));
    assert_eq!((m.pc(), m.hart.instret), (CODE + 16, 4));
}

#[test]
fn budgets_and_traps_stop_a_block_at_the_exact_instruction() {
    let mut m = machine();
    let code: Vec<u32> = (1..=8).map(|k| addi(k, 0, k as i32)).collect();
    put(&m, CODE, &code);
    assert_eq!(m.hart.run_batch::<false>(3), 3);
    assert_eq!(
        (m.pc(), m.hart.instret, m.reg(3), m.reg(4)),
        (CODE + 12, 3, 3, 0)
    );
    assert_eq!(m.hart.run_batch::<false>(100), 100);
    assert_eq!(m.reg(8), 8);
    // A load fault in the middle of a block: sepc is the load, the ones before retired.
    let mut m = machine();
    m.set_reg(1, 0x1000);
    put(&m, CODE, &[addi(2, 0, 5), ld(3, 1, 0), addi(4, 0, 6)]);
    m.hart.run_batch::<false>(3);
    assert_eq!(
        (m.hart.scause, m.hart.sepc, m.hart.stval, m.hart.instret),
        (cause::LOAD_ACCESS_FAULT, CODE + 4, 0x1000, 1)
    );
    assert_eq!((m.reg(2), m.reg(4)), (5, 0));
}

#[test]
fn a_not_taken_branch_stays_in_the_block_a_taken_one_leaves_it() {
    let mut m = machine();
    put(
        &m,
        CODE,
        &[
            bne(0, 0, 12), // not taken
            addi(1, 0, 1),
            beq(0, 0, 8), // taken: skips the next one
            addi(2, 0, 2),
            addi(3, 0, 3),
        ],
    );
    m.hart.run_batch::<false>(4);
    assert_eq!((m.reg(1), m.reg(2), m.reg(3)), (1, 0, 3));
    assert_eq!((m.pc(), m.hart.instret), (CODE + 20, 4));
}

#[test]
fn code_written_behind_the_hart_is_run_after_fence_i() {
    let mut m = machine();
    // addi ra, zero, 1; fence.i; j CODE
    put(&m, CODE, &[addi(1, 0, 1), FENCE_I, jal(0, -8)]);
    assert_eq!(m.hart.run_batch::<false>(3), 3);
    assert_eq!((m.reg(1), m.pc()), (1, CODE));
    // A device writes new code over the cached block (vm-memory, as DMA does). Until the
    // guest's next FENCE.I either version may run; after it, only the new one.
    put(&m, CODE, &[addi(1, 0, 2)]);
    m.hart.run_batch::<false>(3);
    assert_eq!(m.pc(), CODE);
    m.hart.run_batch::<false>(1);
    assert_eq!(m.reg(1), 2);
}

#[test]
fn a_loop_back_to_the_block_start_keeps_budgets_exact() {
    let mut m = machine();
    m.set_reg(2, 100);
    // loop: addi ra, ra, 1; bne ra, sp, loop; addi gp, zero, 3; j .
    put(
        &m,
        CODE,
        &[addi(1, 1, 1), bne(1, 2, -4), addi(3, 0, 3), jal(0, 0)],
    );
    assert_eq!(m.hart.run_batch::<false>(7), 7);
    assert_eq!((m.reg(1), m.pc(), m.hart.instret), (4, CODE + 4, 7));
    // The rest of the loop (193), the addi, then the `j .` block runs itself again until
    // the budget ends, exactly.
    assert_eq!(m.hart.run_batch::<false>(1000), 1000);
    assert_eq!((m.reg(1), m.reg(3), m.pc()), (100, 3, CODE + 12));
    assert_eq!(m.hart.instret, 1007);
}

#[test]
fn a_loop_stops_at_a_device_access_as_any_block() {
    let sink = Sink::default();
    let mut m = machine_with(sink.clone());
    m.set_reg(1, crate::layout::UART_BASE);
    m.set_reg(2, u64::from(b'Z'));
    // loop: sb sp, 0(ra); addi gp, gp, 1; j loop. The UART store ends the batch (an
    // interrupt may be pending now), so the loop does not go round again.
    put(&m, CODE, &[store(0, 1, 2, 0), addi(3, 3, 1), jal(0, -8)]);
    assert_eq!(m.hart.run_batch::<false>(100), 3);
    assert_eq!((m.reg(3), m.pc()), (1, CODE));
    assert_eq!(&*sink.0.lock().unwrap(), b"Z");
}

#[test]
fn instret_read_at_the_end_of_a_block_counts_the_instructions_before_it() {
    let mut m = machine();
    // Three instructions, then `csrr a0, instret` (the block's last op), then one more.
    put(
        &m,
        CODE,
        &[
            addi(1, 0, 1),
            addi(2, 0, 2),
            addi(3, 0, 3),
            csrrs(10, csr::INSTRET as u32, 0),
            addi(4, 0, 4),
        ],
    );
    assert_eq!(m.hart.run_batch::<false>(100), 100);
    assert_eq!(m.reg(10), 3);
    assert_eq!(m.reg(4), 4);
}
