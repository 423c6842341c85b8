//! Sv39 address translation (Privileged spec §4.3): page walks, A/D bits, faults with the
//! virtual address, U pages with SUM and MXR, SFENCE.VMA, unsupported satp modes; and the
//! page-table helpers other tests map code with.

use super::*;

pub(super) const ROOT: u64 = RAM_BASE + 0x10_0000;
pub(super) const L1: u64 = RAM_BASE + 0x10_1000;
pub(super) const L0: u64 = RAM_BASE + 0x10_2000;
pub(super) const V: u64 = 1;
pub(super) const R: u64 = 2;
pub(super) const W: u64 = 4;
pub(super) const X: u64 = 8;
pub(super) const U: u64 = 16;
pub(super) const A: u64 = 64;
pub(super) const D: u64 = 128;

pub(super) fn pte(pa: u64, flags: u64) -> u64 {
    ((pa >> 12) << 10) | flags
}

/// Maps 4 KiB page `va` -> `pa` through ROOT/L1/L0 (one L1 and one L0 table: all test
/// addresses share vpn[2] and vpn[1] unless `level` says otherwise).
pub(super) fn map4k(m: &Machine, va: u64, pa: u64, flags: u64) {
    let vpn2 = (va >> 30) & 0x1ff;
    let vpn1 = (va >> 21) & 0x1ff;
    let vpn0 = (va >> 12) & 0x1ff;
    put_u64(m, ROOT + vpn2 * 8, pte(L1, V));
    put_u64(m, L1 + vpn1 * 8, pte(L0, V));
    put_u64(m, L0 + vpn0 * 8, pte(pa, flags));
}

pub(super) fn map2m(m: &Machine, va: u64, pa: u64, flags: u64) {
    put_u64(m, ROOT + ((va >> 30) & 0x1ff) * 8, pte(L1, V));
    put_u64(m, L1 + ((va >> 21) & 0x1ff) * 8, pte(pa, flags));
}

/// A machine with Sv39 on: code identity-mapped by a 1 GiB superpage at RAM_BASE.
pub(super) fn paged() -> Machine {
    let mut m = machine();
    put_u64(
        &m,
        ROOT + ((RAM_BASE >> 30) & 0x1ff) * 8,
        pte(RAM_BASE, V | R | W | X | A | D),
    );
    assert!(m.hart.csr_write(csr::SATP, (8 << 60) | (ROOT >> 12)));
    m
}

pub(super) const VA: u64 = 0x40_0000_0000 - 0x20_0000; // high in the lower half, own vpn[2]

/// Runs `li x1, va; <insn>` and returns the machine.
pub(super) fn access(m: &mut Machine, va: u64, insn: u32) {
    let code = prog(&[li(1, va), vec![insn]]);
    put(m, CODE, &code);
    m.set_pc(CODE);
    step(m, code.len());
}

#[test]
fn sv39_translates_and_sets_accessed_and_dirty() {
    let mut m = paged();
    map4k(&m, VA, DATA, V | R | W);
    put_u64(&m, DATA + 8, 0xabcd);
    access(&mut m, VA + 8, load(3, 2, 1, 0));
    assert_eq!(m.reg(2), 0xabcd);
    let leaf = L0 + ((VA >> 12) & 0x1ff) * 8;
    assert_eq!(get_u64(&m, leaf) & (A | D), A, "A set by the load, D not");
    access(&mut m, VA + 16, store(3, 1, 1, 0));
    assert_eq!(
        get_u64(&m, leaf) & (A | D),
        A | D,
        "D set by the store (after a TLB hit for read)"
    );
    assert_eq!(get_u64(&m, DATA + 16), VA + 16);
}

#[test]
fn sv39_faults_carry_the_virtual_address() {
    // Invalid PTE.
    let mut m = paged();
    access(&mut m, VA + 4, load(2, 2, 1, 0));
    assert_eq!(
        (m.hart.scause, m.hart.stval),
        (cause::LOAD_PAGE_FAULT, VA + 4)
    );
    // Store to a read-only page.
    let mut m = paged();
    map4k(&m, VA, DATA, V | R | A);
    access(&mut m, VA, store(3, 1, 1, 0));
    assert_eq!((m.hart.scause, m.hart.stval), (cause::STORE_PAGE_FAULT, VA));
    // W without R is reserved.
    let mut m = paged();
    map4k(&m, VA, DATA, V | W);
    access(&mut m, VA, load(3, 2, 1, 0));
    assert_eq!(m.hart.scause, cause::LOAD_PAGE_FAULT);
    // Non-canonical address.
    let mut m = paged();
    access(&mut m, 0x0000_8000_0000_0000, load(3, 2, 1, 0));
    assert_eq!(
        (m.hart.scause, m.hart.stval),
        (cause::LOAD_PAGE_FAULT, 0x0000_8000_0000_0000)
    );
    // Misaligned superpage: a 2 MiB leaf whose PPN is not 2 MiB aligned.
    let mut m = paged();
    map2m(&m, VA, DATA, V | R | W | A | D);
    access(&mut m, VA, load(3, 2, 1, 0));
    assert_eq!(m.hart.scause, cause::LOAD_PAGE_FAULT);
    // Aligned 2 MiB superpage works, and offsets within it come from the VA.
    let mut m = paged();
    map2m(&m, VA, RAM_BASE + 0x20_0000, V | R | W | A | D);
    put_u64(&m, RAM_BASE + 0x20_0000 + 0x1_2340, 77);
    access(&mut m, VA + 0x1_2340, load(3, 2, 1, 0));
    assert_eq!(m.reg(2), 77);
    // Fetch from a non-executable page.
    let mut m = paged();
    map4k(&m, VA, CODE, V | R | A);
    m.set_pc(VA);
    step(&mut m, 1);
    assert_eq!((m.hart.scause, m.hart.stval), (cause::INSN_PAGE_FAULT, VA));
    // Page table outside RAM: access fault of the access type.
    let mut m = paged();
    put_u64(&m, ROOT + ((VA >> 30) & 0x1ff) * 8, pte(0x2000_0000, V));
    access(&mut m, VA, store(3, 1, 1, 0));
    assert_eq!(
        (m.hart.scause, m.hart.stval),
        (cause::STORE_ACCESS_FAULT, VA)
    );
}

#[test]
fn sv39_user_pages_sum_and_mxr() {
    // S-mode load from a U page: fault without SUM, fine with it.
    let mut m = paged();
    map4k(&m, VA, DATA, V | R | W | U | A | D);
    put_u64(&m, DATA, 5);
    access(&mut m, VA, load(3, 2, 1, 0));
    assert_eq!(m.hart.scause, cause::LOAD_PAGE_FAULT);
    m.hart.scause = 0;
    assert!(m.hart.csr_write(csr::SSTATUS, sstatus::SUM));
    access(&mut m, VA, load(3, 2, 1, 0));
    assert_eq!((m.hart.scause, m.reg(2)), (0, 5));
    // Clearing SUM again faults even though the TLB holds the entry.
    assert!(m.hart.csr_write(csr::SSTATUS, 0));
    access(&mut m, VA, load(3, 2, 1, 0));
    assert_eq!(m.hart.scause, cause::LOAD_PAGE_FAULT);
    // S-mode never executes U pages, even with SUM.
    let mut m = paged();
    map4k(&m, VA, CODE, V | R | X | U | A);
    assert!(m.hart.csr_write(csr::SSTATUS, sstatus::SUM));
    m.set_pc(VA);
    step(&mut m, 1);
    assert_eq!(m.hart.scause, cause::INSN_PAGE_FAULT);
    // MXR makes execute-only pages readable.
    let mut m = paged();
    map4k(&m, VA, DATA, V | X | A);
    access(&mut m, VA, load(3, 2, 1, 0));
    assert_eq!(m.hart.scause, cause::LOAD_PAGE_FAULT);
    m.hart.scause = 0;
    assert!(m.hart.csr_write(csr::SSTATUS, sstatus::MXR));
    access(&mut m, VA, load(3, 2, 1, 0));
    assert_eq!(m.hart.scause, 0);
}

#[test]
fn sv39_u_mode_needs_u_pages_and_sfence_flushes() {
    let mut m = paged();
    // User code page at VA (maps CODE), user data page at VA + 0x1000.
    map4k(&m, VA, CODE, V | R | X | U | A);
    map4k(&m, VA + 0x1000, DATA, V | R | W | U | A | D);
    put_u64(&m, DATA, 9);
    put(
        &m,
        CODE,
        &prog(&[li(1, VA + 0x1000), vec![load(3, 2, 1, 0), load(3, 3, 0, 0)]]),
    );
    m.hart.sepc = VA;
    m.hart.sstatus &= !sstatus::SPP;
    put(&m, RAM_BASE + 0x7000, &[SRET]);
    m.set_pc(RAM_BASE + 0x7000);
    let n = li(1, VA + 0x1000).len();
    step(&mut m, 1 + n + 1);
    assert_eq!(m.hart.prv, Privilege::User);
    assert_eq!(m.reg(2), 9);
    // Load from address 0 (unmapped) in U-mode.
    step(&mut m, 1);
    assert_eq!((m.hart.scause, m.hart.stval), (cause::LOAD_PAGE_FAULT, 0));
    // Remapping the data page is seen after sfence.vma.
    let mut m2 = paged();
    map4k(&m2, VA, DATA, V | R | A);
    put_u64(&m2, DATA, 1);
    put_u64(&m2, DATA + 0x1000, 2);
    access(&mut m2, VA, load(3, 2, 1, 0));
    assert_eq!(m2.reg(2), 1);
    map4k(&m2, VA, DATA + 0x1000, V | R | A);
    access(&mut m2, VA, load(3, 2, 1, 0));
    assert_eq!(m2.reg(2), 1, "stale TLB entry until sfence.vma");
    let code = prog(&[vec![sfence_vma(0, 0)], li(1, VA), vec![load(3, 2, 1, 0)]]);
    put(&m2, CODE, &code);
    m2.set_pc(CODE);
    step(&mut m2, code.len());
    assert_eq!(m2.reg(2), 2);
}

#[test]
fn satp_ignores_unsupported_modes() {
    let mut m = machine();
    assert!(m.hart.csr_write(csr::SATP, (9 << 60) | 0x1234));
    assert_eq!(m.hart.csr_read(csr::SATP), Some(0));
    // ASID bits are not implemented (ASIDLEN = 0).
    assert!(m
        .hart
        .csr_write(csr::SATP, (8 << 60) | (0xffff << 44) | 0x80100));
    assert_eq!(m.hart.csr_read(csr::SATP), Some((8 << 60) | 0x80100));
}
