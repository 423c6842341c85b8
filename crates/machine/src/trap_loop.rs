//! The trap-loop budget: a guest stuck taking the same synchronous trap
//! over and over without completing a single instruction (a trap vector
//! that itself faults, a handler page that was unmapped) would spin the
//! host forever at full speed. After [`TRAP_LOOP_LIMIT`] identical traps
//! in a row (same cause, same pc, same tval, no instruction retired in
//! between) the machine stops with [`crate::ExitReason::TrapLoop`] and an
//! error log line that says where the guest is stuck.
//!
//! Any real handler retires instructions, so a guest making progress,
//! however slowly (page faults served one by one, a retried instruction),
//! never reaches the limit.

/// Identical synchronous traps in a row, with no instruction retired in
/// between, after which the machine stops the guest.
pub const TRAP_LOOP_LIMIT: u32 = 100_000;

/// Watches the synchronous traps of one hart.
#[derive(Debug, Default)]
pub(crate) struct TrapLoopGuard {
    /// `(cause, pc, tval, instret)` of the last trap.
    last: Option<(u64, u64, u64, u64)>,
    repeats: u32,
}

impl TrapLoopGuard {
    /// A synchronous trap with `cause` at `pc` with `tval`, after `instret`
    /// retired instructions. Returns true when the budget is spent.
    pub(crate) fn observe(&mut self, cause: u64, pc: u64, tval: u64, instret: u64) -> bool {
        let now = (cause, pc, tval, instret);
        if self.last == Some(now) {
            self.repeats = self.repeats.saturating_add(1);
        } else {
            self.last = Some(now);
            self.repeats = 1;
        }
        self.repeats >= TRAP_LOOP_LIMIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExitReason, Machine, MachineConfig};

    #[test]
    fn progress_between_traps_resets_the_count() {
        let mut g = TrapLoopGuard::default();
        for i in 0..3 * u64::from(TRAP_LOOP_LIMIT) {
            // Same trap, but an instruction retired each time.
            assert!(!g.observe(13, 0x1000, 0x2000, i));
        }
        for _ in 1..TRAP_LOOP_LIMIT {
            assert!(!g.observe(13, 0x1000, 0x2000, 7));
        }
        assert!(g.observe(13, 0x1000, 0x2000, 7));
    }

    /// A guest whose trap vector is not executable (pc and stvec at 0, no
    /// RAM there) faults at the vector forever: the machine stops it with
    /// `TrapLoop` instead of spinning until the instruction limit.
    #[test]
    fn a_faulting_trap_vector_stops_the_machine() {
        let limit = 100 * u64::from(TRAP_LOOP_LIMIT);
        let mut m = Machine::new(MachineConfig {
            ram_size: 4 << 20,
            console: Box::new(std::io::sink()),
            instruction_limit: Some(limit),
            ..Default::default()
        })
        .expect("machine");
        m.hart.pc = 0;
        m.hart.stvec = 0;
        let reason = m.run().expect("run");
        assert!(
            matches!(
                reason,
                ExitReason::TrapLoop {
                    cause: 1, // instruction access fault
                    pc: 0,
                    tval: 0
                }
            ),
            "{reason:?}"
        );
        assert!(m.instructions_retired() < limit);
    }
}
