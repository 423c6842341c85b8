//! The hart's data side: Sv39 translation and its TLB (Privileged spec §4.3), loads and
//! stores (aligned, misaligned byte by byte, to RAM or a device window), and the A
//! extension's LR/SC and AMOs (Unprivileged spec chapter 8).

use super::*;

impl Hart {
    #[inline(always)]
    pub(super) fn translate(&mut self, va: u64, acc: Access) -> Result<u64, Trap> {
        match self.tlb_lookup(va, acc) {
            Some(pa) => Ok(pa),
            None => self.walk(va, acc),
        }
    }

    /// The physical address of `va` without a page walk: MMU off, or a TLB hit whose
    /// permissions allow `acc`. `None`: ask [`Hart::walk`].
    #[inline(always)]
    fn tlb_lookup(&self, va: u64, acc: Access) -> Option<u64> {
        if !self.mmu_on {
            return Some(va);
        }
        let vpn = va >> 12;
        let e = self.tlb[(vpn as usize) & (TLB_SIZE - 1)];
        if e.vpn == vpn && (self.perms[acc as usize] >> (e.pa_flags & 31)) & 1 != 0 {
            return Some((e.pa_flags & !0xfff) | (va & 0xfff));
        }
        None
    }

    /// The RAM offset of an `N`-byte access at `va` when it is the common case: aligned,
    /// translated without a walk, all in RAM. `None`: take the full path ([`Hart::load`],
    /// [`Hart::store`]), which also raises the faults. The offset is `N`-aligned.
    #[inline(always)]
    pub(super) fn ram_fast<const N: usize>(&self, va: u64, acc: Access) -> Option<usize> {
        if va & (N as u64 - 1) != 0 {
            return None;
        }
        // Translation keeps the page offset and RAM_BASE is page aligned: `N`-aligned.
        self.bus.ram.offset(self.tlb_lookup(va, acc)?, N as u64)
    }

    /// Sv39 page walk (Privileged spec §4.3.2), filling the TLB on success.
    #[inline(never)]
    fn walk(&mut self, va: u64, acc: Access) -> Result<u64, Trap> {
        let pf = acc.page_fault(va);
        // Bits 63:39 must equal bit 38.
        if (((va << 25) as i64) >> 25) as u64 != va {
            return Err(pf);
        }
        let mut table = (self.satp & SATP_PPN_MASK) << 12;
        let mut level: u32 = 2;
        let (pte, pte_off) = loop {
            let index = (va >> (12 + 9 * level)) & 0x1ff;
            // table < 2^56 and index * 8 < 4096: no overflow.
            let addr = table + index * 8;
            let off = self.bus.ram.offset(addr, 8).ok_or(acc.access_fault(va))?;
            // SAFETY: `offset(addr, 8)` proved it in bounds; `addr` is a
            // page-aligned table plus `index * 8`: 8-aligned.
            let pte = unsafe { self.bus.ram.load::<8>(off) };
            // Invalid, W without R, or reserved / Svpbmt / Svnapot bits (not implemented).
            if pte & pte::V == 0 || (pte & pte::R == 0 && pte & pte::W != 0) || pte >> 54 != 0 {
                return Err(pf);
            }
            if pte & (pte::R | pte::X) != 0 {
                break (pte, off);
            }
            if level == 0 {
                return Err(pf);
            }
            level -= 1;
            table = ((pte >> 10) & pte::PPN_MASK) << 12;
        };
        let user_page = pte & pte::U != 0;
        let priv_ok = match self.prv {
            Privilege::User => user_page,
            Privilege::Supervisor => {
                !user_page || (acc != Access::Exec && self.sstatus & sstatus::SUM != 0)
            }
        };
        let access_ok = match acc {
            Access::Read => {
                pte & pte::R != 0 || (pte & pte::X != 0 && self.sstatus & sstatus::MXR != 0)
            }
            Access::Write => pte & pte::W != 0,
            Access::Exec => pte & pte::X != 0,
        };
        if !priv_ok || !access_ok {
            return Err(pf);
        }
        let ppn = (pte >> 10) & pte::PPN_MASK;
        // Pages below a superpage's level come from the virtual address.
        let low_mask = (1u64 << (9 * level)) - 1;
        if ppn & low_mask != 0 {
            return Err(pf);
        }
        let mut new = pte | pte::A;
        if acc == Access::Write {
            new |= pte::D;
        }
        // SAFETY: `pte_off` is the in-bounds, 8-aligned offset the PTE was
        // loaded from.
        if new != pte && !unsafe { self.bus.ram.compare_exchange_u64(pte_off, pte, new) } {
            // The PTE changed under us (device DMA into a page table): let the guest retry.
            return Err(pf);
        }
        if new != pte {
            self.note_store(pte_off);
        }
        let pa_page = ((ppn & !low_mask) | ((va >> 12) & low_mask)) << 12;
        let flags = ((new >> 1) & 0xf) | (((new >> 7) & 1) << 4);
        let vpn = va >> 12;
        self.tlb[(vpn as usize) & (TLB_SIZE - 1)] = TlbEntry {
            vpn,
            pa_flags: pa_page | flags,
        };
        Ok(pa_page | (va & 0xfff))
    }

    /// The value an integer load of `kind` (LB..LWU) at `va` puts in rd.
    #[inline(always)]
    pub(super) fn load_op(&mut self, kind: Kind, va: u64) -> Result<u64, Trap> {
        let v = match mem_size(kind) {
            1 => self.load::<1>(va)?,
            2 => self.load::<2>(va)?,
            4 => self.load::<4>(va)?,
            _ => self.load::<8>(va)?,
        };
        Ok(load_extend(kind, v))
    }

    /// An integer store of `kind` (SB..SD) of `v` at `va`.
    #[inline(always)]
    pub(super) fn store_op(&mut self, kind: Kind, va: u64, v: u64) -> Result<(), Trap> {
        match mem_size(kind) {
            1 => self.store::<1>(va, v),
            2 => self.store::<2>(va, v),
            4 => self.store::<4>(va, v),
            _ => self.store::<8>(va, v),
        }
    }

    #[inline(always)]
    pub(crate) fn load<const N: usize>(&mut self, va: u64) -> Result<u64, Trap> {
        if va & (N as u64 - 1) != 0 {
            return self.load_misaligned(va, N);
        }
        let pa = self.translate(va, Access::Read)?;
        if let Some(off) = self.bus.ram.offset(pa, N as u64) {
            // SAFETY: `offset(pa, N)` proved it in bounds; `va` is
            // N-aligned (checked above) and translation keeps the page
            // offset, so `pa` and `off` are too.
            return Ok(unsafe { self.bus.ram.load::<N>(off) });
        }
        self.mmio_load(va, pa, N)
    }

    #[inline(always)]
    pub(crate) fn store<const N: usize>(&mut self, va: u64, v: u64) -> Result<(), Trap> {
        if va & (N as u64 - 1) != 0 {
            return self.store_misaligned(va, N, v);
        }
        let pa = self.translate(va, Access::Write)?;
        if let Some(off) = self.bus.ram.offset(pa, N as u64) {
            // SAFETY: as in `load`.
            unsafe { self.bus.ram.store::<N>(off, v) };
            self.note_store(off);
            return Ok(());
        }
        self.mmio_store(va, pa, N, v)
    }

    #[inline(never)]
    fn mmio_load(&mut self, va: u64, pa: u64, size: usize) -> Result<u64, Trap> {
        self.break_batch = true;
        self.bus
            .mmio_read(pa, size)
            .ok_or(Access::Read.access_fault(va))
    }

    #[inline(never)]
    fn mmio_store(&mut self, va: u64, pa: u64, size: usize, v: u64) -> Result<(), Trap> {
        self.break_batch = true;
        if self.bus.mmio_write(pa, size, v) {
            Ok(())
        } else {
            Err(Access::Write.access_fault(va))
        }
    }

    /// A misaligned load, byte by byte (each byte translated on its own).
    #[cold]
    fn load_misaligned(&mut self, va: u64, size: usize) -> Result<u64, Trap> {
        let mut v = 0u64;
        for k in 0..size {
            let a = va.wrapping_add(k as u64);
            let pa = self.translate(a, Access::Read)?;
            let b = self
                .bus
                .read_phys(pa, 1)
                .ok_or(Access::Read.access_fault(a))?;
            v |= b << (8 * k);
        }
        Ok(v)
    }

    /// A misaligned store, byte by byte; every byte is translated before any is written, so
    /// a page fault leaves memory untouched.
    #[cold]
    fn store_misaligned(&mut self, va: u64, size: usize, v: u64) -> Result<(), Trap> {
        let mut pas = [0u64; 8];
        for (k, pa) in pas.iter_mut().enumerate().take(size) {
            *pa = self.translate(va.wrapping_add(k as u64), Access::Write)?;
        }
        for (k, &pa) in pas.iter().enumerate().take(size) {
            if !self.bus.write_phys(pa, 1, v >> (8 * k)) {
                return Err(Access::Write.access_fault(va.wrapping_add(k as u64)));
            }
            self.note_store_pa(pa);
        }
        Ok(())
    }

    /// LR, SC and AMOs (Unprivileged spec chapter 8). Returns the value for `rd`.
    #[inline(never)]
    pub(super) fn atomic(&mut self, i: Insn, addr: u64, src: u64) -> Result<u64, Trap> {
        let wide = matches!(i.kind, Kind::LrD | Kind::ScD | Kind::AmoD);
        let size: usize = if wide { 8 } else { 4 };
        let is_lr = matches!(i.kind, Kind::LrW | Kind::LrD);
        if addr & (size as u64 - 1) != 0 {
            let cause = if is_lr {
                cause::LOAD_MISALIGNED
            } else {
                cause::STORE_MISALIGNED
            };
            return Err(Trap { cause, tval: addr });
        }
        let fix = |v: u64| if wide { v } else { sext32(v) };
        if is_lr {
            let pa = self.translate(addr, Access::Read)?;
            let v = self
                .bus
                .read_phys(pa, size)
                .ok_or(Access::Read.access_fault(addr))?;
            self.reservation = Some(pa);
            return Ok(fix(v));
        }
        let pa = self.translate(addr, Access::Write)?;
        if matches!(i.kind, Kind::ScW | Kind::ScD) {
            // An SC always ends the reservation; it succeeds only on the reserved address.
            if self.reservation.take() != Some(pa) {
                return Ok(1);
            }
            if !self.bus.write_phys(pa, size, src) {
                return Err(Access::Write.access_fault(addr));
            }
            self.note_store_pa(pa);
            return Ok(0);
        }
        let old = self
            .bus
            .read_phys(pa, size)
            .ok_or(Access::Write.access_fault(addr))?;
        let new = amo(i.imm, old, src, wide);
        self.note_store_pa(pa);
        if !self.bus.write_phys(pa, size, new) {
            return Err(Access::Write.access_fault(addr));
        }
        Ok(fix(old))
    }
}
