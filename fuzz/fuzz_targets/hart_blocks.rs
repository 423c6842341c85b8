//! Fuzz target: arbitrary guest code on the software machine's hart, run twice: by the
//! block engine (decoded blocks, threaded dispatch, the code-epoch rule) and by the
//! one-instruction-at-a-time interpreter (the tracing path). Neither may panic, and both
//! must end in the same state: registers, pc, instructions retired, exit reason, memory.
//!
//! Input: the first 248 bytes set x1..x31 (8 bytes each, little-endian, as far as the
//! input goes); the rest is the code, loaded at the start of RAM where the hart starts, in
//! supervisor mode with the MMU off. Instructions whose result depends on the host clock
//! or that wait for it (reads of `time`, ECALL into the SBI, WFI) are replaced by NOPs
//! before loading, so that the two runs are deterministic. Everything else goes: stores
//! that rewrite the code, FENCE.I, CSR writes (satp, stvec, sstatus), traps, SRET.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};
use vmmio_machine::layout::RAM_BASE;
use vmmio_machine::{Machine, MachineConfig};

const RAM: u64 = 1 << 20;
const STEPS: u64 = 4000;
const NOP: u32 = 0x0000_0013;

/// Replaces the clock-dependent instructions of `code` (see the module doc) by NOPs.
fn tame(code: &mut [u8]) {
    let mut at = 0;
    while at + 2 <= code.len() {
        let lo = u16::from_le_bytes([code[at], code[at + 1]]);
        if lo & 3 != 3 {
            at += 2;
            continue;
        }
        if at + 4 > code.len() {
            break;
        }
        let w = u32::from_le_bytes([code[at], code[at + 1], code[at + 2], code[at + 3]]);
        let csr = w >> 20;
        let system = w & 0x7f == 0x73;
        let funct3 = (w >> 12) & 7;
        let clock_csr = matches!(csr, 0xc01 | 0xc81);
        if system && ((funct3 != 0 && clock_csr) || w == 0x0000_0073 || w == 0x1050_0073) {
            code[at..at + 4].copy_from_slice(&NOP.to_le_bytes());
        }
        at += 4;
    }
}

fn run(regs: &[u64], code: &[u8], trace: bool) -> (Vec<u64>, u64, u64, String, Vec<u8>) {
    let config = MachineConfig {
        ram_size: RAM,
        console: Box::new(std::io::sink()),
        trace: trace.then(|| Box::new(std::io::sink()) as Box<dyn std::io::Write + Send>),
        instruction_limit: Some(STEPS),
        ..MachineConfig::default()
    };
    let mut m = Machine::new(config).expect("machine");
    m.memory()
        .write_slice(code, GuestAddress(RAM_BASE))
        .expect("code fits in RAM");
    for (i, &v) in regs.iter().enumerate() {
        m.set_reg(i + 1, v);
    }
    m.set_pc(RAM_BASE);
    let exit = format!("{:?}", m.run());
    let regs = (0..32).map(|i| m.reg(i)).collect();
    let mut mem = vec![0; 0x4000];
    m.memory()
        .read_slice(&mut mem, GuestAddress(RAM_BASE))
        .expect("RAM");
    (regs, m.pc(), m.instructions_retired(), exit, mem)
}

fuzz_target!(|data: &[u8]| {
    let split = data.len().min(31 * 8);
    let regs: Vec<u64> = data[..split]
        .chunks(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect();
    let mut code = data[split..].to_vec();
    code.truncate(0x2000);
    tame(&mut code);
    let blocks = run(&regs, &code, false);
    let interpreter = run(&regs, &code, true);
    assert!(
        blocks == interpreter,
        "block engine and interpreter disagree: pc {:#x} vs {:#x}, retired {} vs {}, exit {} vs {}",
        blocks.1,
        interpreter.1,
        blocks.2,
        interpreter.2,
        blocks.3,
        interpreter.3
    );
});
