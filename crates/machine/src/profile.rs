//! A guest profile: where the guest's instructions go.
//!
//! [`Machine::enable_profile`](crate::Machine::enable_profile) makes the run loop stop a
//! batch exactly at every `interval`-th instruction (batch budgets are exact) and record
//! the hart's pc and privilege there: a systematic sample of retired instructions, free
//! when off (the run loop's budget is already a `min` of limits). [`Profile::write`] saves
//! the histogram as text; [`SymbolMap`] reads a Linux `System.map` and
//! [`SymbolMap::report`] folds the samples into functions, so `vmmio profile` can print
//! the kernel functions that take the guest's time.

use std::collections::HashMap;
use std::io::{self, BufRead, Write};

use crate::Privilege;

/// Samples of the guest pc taken every `interval` instructions.
#[derive(Debug, Clone)]
pub struct Profile {
    interval: u64,
    samples: HashMap<(u64, Privilege), u64>,
    total: u64,
}

impl Profile {
    /// An empty profile sampling every `interval` instructions (at least 1).
    pub fn new(interval: u64) -> Self {
        Self {
            interval: interval.max(1),
            samples: HashMap::new(),
            total: 0,
        }
    }

    /// Instructions between two samples.
    pub fn interval(&self) -> u64 {
        self.interval
    }

    /// Records one sample: the pc of the next instruction and the privilege it runs in.
    pub fn record(&mut self, pc: u64, prv: Privilege) {
        let n = self.samples.entry((pc, prv)).or_insert(0);
        *n = n.saturating_add(1);
        self.total = self.total.saturating_add(1);
    }

    /// Samples taken.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Samples at `pc` in privilege `prv`.
    pub fn count(&self, pc: u64, prv: Privilege) -> u64 {
        self.samples.get(&(pc, prv)).copied().unwrap_or(0)
    }

    /// Writes the histogram: a header line `# vmmio profile interval N samples M`, then
    /// one line per pc, `count S|U 0x<pc>`, most samples first.
    ///
    /// # Errors
    /// Those of `w`.
    pub fn write(&self, w: &mut dyn Write) -> io::Result<()> {
        writeln!(
            w,
            "# vmmio profile interval {} samples {}",
            self.interval, self.total
        )?;
        let mut rows: Vec<_> = self.samples.iter().collect();
        rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0 .0.cmp(&b.0 .0)));
        for ((pc, prv), n) in rows {
            let p = match prv {
                Privilege::Supervisor => 'S',
                Privilege::User => 'U',
            };
            writeln!(w, "{n} {p} {pc:#x}")?;
        }
        Ok(())
    }

    /// Reads what [`Profile::write`] wrote. Lines that do not parse are skipped (and
    /// counted in the second value).
    ///
    /// # Errors
    /// Those of `r`.
    pub fn read(r: &mut dyn BufRead) -> io::Result<(Self, usize)> {
        let mut p = Self::new(1);
        let mut bad = 0;
        for line in r.lines() {
            let line = line?;
            if let Some(rest) = line.strip_prefix("# vmmio profile interval ") {
                if let Some(i) = rest.split_whitespace().next().and_then(|s| s.parse().ok()) {
                    p.interval = std::cmp::max(i, 1);
                }
                continue;
            }
            let mut f = line.split_whitespace();
            let parsed = (|| {
                let n: u64 = f.next()?.parse().ok()?;
                let prv = match f.next()? {
                    "S" => Privilege::Supervisor,
                    "U" => Privilege::User,
                    _ => return None,
                };
                let pc = u64::from_str_radix(f.next()?.strip_prefix("0x")?, 16).ok()?;
                Some((n, prv, pc))
            })();
            match parsed {
                Some((n, prv, pc)) => {
                    let e = p.samples.entry((pc, prv)).or_insert(0);
                    *e = e.saturating_add(n);
                    p.total = p.total.saturating_add(n);
                }
                None => bad += 1,
            }
        }
        Ok((p, bad))
    }
}

/// Function start addresses from a Linux `System.map` (`<hex address> <type> <name>`),
/// text symbols only (types t, T, w, W).
#[derive(Debug, Clone, Default)]
pub struct SymbolMap {
    /// Sorted by address.
    syms: Vec<(u64, String)>,
}

/// Samples of one function, from [`SymbolMap::report`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSamples {
    /// The function's name; `[user]` for all U-mode samples, `[unknown]` for S-mode pcs
    /// outside the map (modules, firmware).
    pub name: String,
    /// Samples that fell in it.
    pub samples: u64,
}

impl SymbolMap {
    /// Parses a `System.map`. Lines that are not text symbols are skipped.
    ///
    /// # Errors
    /// Those of `r`.
    pub fn read(r: &mut dyn BufRead) -> io::Result<Self> {
        let mut syms = Vec::new();
        for line in r.lines() {
            let line = line?;
            let mut f = line.split_whitespace();
            let (Some(a), Some(t), Some(name)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            if !matches!(t, "t" | "T" | "w" | "W") {
                continue;
            }
            if let Ok(addr) = u64::from_str_radix(a, 16) {
                syms.push((addr, name.to_string()));
            }
        }
        syms.sort();
        Ok(Self { syms })
    }

    /// The function whose code holds `pc`: the last symbol at or below it. `None` below the
    /// first symbol or past `_etext` / `_end` when the map has them.
    pub fn lookup(&self, pc: u64) -> Option<&str> {
        let i = self
            .syms
            .partition_point(|(a, _)| *a <= pc)
            .checked_sub(1)?;
        let (_, name) = self.syms.get(i)?;
        if matches!(name.as_str(), "_etext" | "_end") {
            return None;
        }
        Some(name)
    }

    /// Folds a profile into functions, most samples first.
    pub fn report(&self, profile: &Profile) -> Vec<FunctionSamples> {
        let mut by_name: HashMap<&str, u64> = HashMap::new();
        for (&(pc, prv), &n) in &profile.samples {
            let name = match prv {
                Privilege::User => "[user]",
                Privilege::Supervisor => self.lookup(pc).unwrap_or("[unknown]"),
            };
            let e = by_name.entry(name).or_insert(0);
            *e = e.saturating_add(n);
        }
        let mut out: Vec<_> = by_name
            .into_iter()
            .map(|(name, samples)| FunctionSamples {
                name: name.to_string(),
                samples,
            })
            .collect();
        out.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.name.cmp(&b.name)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::asm::{addi, jal};
    use crate::tests::{put, CODE};
    use crate::{ExitReason, Machine, MachineConfig};

    /// A 4-instruction loop sampled every 10 instructions: the samples fall exactly on
    /// the loop's 1st and 3rd instruction, half each, one per 10 instructions run.
    #[test]
    fn the_machine_samples_every_nth_instruction() {
        let mut m = Machine::new(MachineConfig {
            ram_size: 1 << 20,
            console: Box::new(std::io::sink()),
            instruction_limit: Some(40_000),
            ..Default::default()
        })
        .unwrap();
        put(
            &m,
            CODE,
            &[addi(1, 1, 1), addi(2, 2, 1), addi(3, 3, 1), jal(0, -12)],
        );
        assert!(m.profile().is_none());
        m.enable_profile(10);
        assert_eq!(m.run().unwrap(), ExitReason::InstructionLimit);
        let p = m.profile().unwrap();
        assert_eq!(p.total(), 4000);
        assert_eq!(p.count(CODE, Privilege::Supervisor), 2000);
        assert_eq!(p.count(CODE + 8, Privilege::Supervisor), 2000);
    }

    const MAP: &str = "\
ffffffff80000000 T _start
ffffffff80001000 t do_one_initcall
ffffffff80001200 T memset
ffffffff80001240 D some_data
ffffffff80001300 W weak_fn
ffffffff80002000 T _etext
";

    #[test]
    fn the_symbolizer_maps_addresses_to_the_enclosing_function() {
        let m = SymbolMap::read(&mut MAP.as_bytes()).unwrap();
        assert_eq!(m.lookup(0xffffffff80001000), Some("do_one_initcall"));
        assert_eq!(m.lookup(0xffffffff800011fe), Some("do_one_initcall"));
        // Data symbols do not split a function.
        assert_eq!(m.lookup(0xffffffff80001250), Some("memset"));
        assert_eq!(m.lookup(0xffffffff80001304), Some("weak_fn"));
        assert_eq!(m.lookup(0xffffffff7fffffff), None);
        assert_eq!(m.lookup(0xffffffff80002000), None);
    }

    #[test]
    fn a_profile_round_trips_and_folds_into_functions() {
        let mut p = Profile::new(1000);
        for _ in 0..3 {
            p.record(0xffffffff80001204, Privilege::Supervisor);
        }
        p.record(0xffffffff80001210, Privilege::Supervisor);
        p.record(0xffffffff80001010, Privilege::Supervisor);
        p.record(0x10000, Privilege::User);
        p.record(0x1, Privilege::Supervisor);
        let mut text = Vec::new();
        p.write(&mut text).unwrap();
        let (q, bad) = Profile::read(&mut &text[..]).unwrap();
        assert_eq!(bad, 0);
        assert_eq!(q.interval(), 1000);
        assert_eq!(q.total(), 7);
        assert_eq!(q.count(0xffffffff80001204, Privilege::Supervisor), 3);
        let m = SymbolMap::read(&mut MAP.as_bytes()).unwrap();
        let r = m.report(&q);
        let get = |n: &str| r.iter().find(|f| f.name == n).map(|f| f.samples);
        assert_eq!(r[0].name, "memset");
        assert_eq!(get("memset"), Some(4));
        assert_eq!(get("do_one_initcall"), Some(1));
        assert_eq!(get("[user]"), Some(1));
        assert_eq!(get("[unknown]"), Some(1));
    }
}
