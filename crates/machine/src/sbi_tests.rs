//! Each SBI call, called directly (a7/a6/a0..a2 set, `sbi_call`, a0/a1 read back), with
//! the arguments a well-behaved kernel passes and hostile ones.

use vm_memory::{Bytes, GuestAddress};

use super::{eid, err, DBCN_MAX_BYTES, IMPL_ID, IMPL_VERSION, SPEC_VERSION};
use crate::hart::{SSIP, STIP};
use crate::layout::RAM_BASE;
use crate::tests::Sink;
use crate::{ExitReason, Machine, MachineConfig};

const RAM: u64 = 4 << 20;

fn machine() -> (Machine, Sink) {
    let sink = Sink::default();
    let m = Machine::new(MachineConfig {
        ram_size: RAM,
        console: Box::new(sink.clone()),
        ..Default::default()
    })
    .unwrap();
    (m, sink)
}

/// Calls extension `ext`, function `fid` with a0..a2 = `args`; returns (error, value).
fn call(m: &mut Machine, ext: u64, fid: u64, args: [u64; 3]) -> (i64, u64) {
    m.hart.x[17] = ext;
    m.hart.x[16] = fid;
    m.hart.x[10..13].copy_from_slice(&args);
    m.hart.sbi_call();
    (m.hart.x[10] as i64, m.hart.x[11])
}

const OK: i64 = err::SUCCESS;
const INVALID: i64 = err::INVALID_PARAM;
const UNSUPPORTED: i64 = err::NOT_SUPPORTED;

#[test]
fn base_reports_version_2_0_ids_and_probes() {
    let (mut m, _) = machine();
    assert_eq!(call(&mut m, eid::BASE, 0, [0; 3]), (OK, 2 << 24));
    assert_eq!(SPEC_VERSION >> 24, 2);
    assert_eq!(call(&mut m, eid::BASE, 1, [0; 3]), (OK, IMPL_ID));
    assert_eq!(call(&mut m, eid::BASE, 2, [0; 3]), (OK, IMPL_VERSION));
    for ext in [
        eid::TIME,
        eid::IPI,
        eid::RFENCE,
        eid::HSM,
        eid::SRST,
        eid::DBCN,
        eid::BASE,
        eid::LEGACY_PUTCHAR,
    ] {
        assert_eq!(call(&mut m, eid::BASE, 3, [ext, 0, 0]), (OK, 1), "{ext:#x}");
    }
    // PMU, SUSP, CPPC, an arbitrary and a huge ID: absent.
    for ext in [0x504d55, 0x53555350, 0x43505043, 0x1234_5678, u64::MAX] {
        assert_eq!(call(&mut m, eid::BASE, 3, [ext, 0, 0]), (OK, 0), "{ext:#x}");
    }
    // mvendorid, marchid, mimpid.
    for fid in 4..=6 {
        assert_eq!(call(&mut m, eid::BASE, fid, [0; 3]), (OK, 0));
    }
    assert_eq!(call(&mut m, eid::BASE, 7, [0; 3]).0, UNSUPPORTED);
    assert_eq!(call(&mut m, eid::BASE, u64::MAX, [0; 3]).0, UNSUPPORTED);
    assert_eq!(call(&mut m, 0x0bad_cafe, 0, [0; 3]).0, UNSUPPORTED);
    assert_eq!(
        call(&mut m, u64::MAX, u64::MAX, [u64::MAX; 3]).0,
        UNSUPPORTED
    );
}

#[test]
fn time_set_timer_arms_and_clears_the_pending_timer() {
    let (mut m, _) = machine();
    m.hart.sip |= STIP;
    assert_eq!(call(&mut m, eid::TIME, 0, [12345, 0, 0]), (OK, 0));
    assert_eq!(m.hart.timecmp, 12345);
    assert_eq!(m.hart.sip & STIP, 0);
    assert_eq!(call(&mut m, eid::TIME, 1, [0; 3]).0, UNSUPPORTED);
}

#[test]
fn ipi_checks_the_hart_list() {
    let (mut m, _) = machine();
    // Hart 0 by mask, and all harts (base -1, any mask).
    for (mask, base) in [(1, 0), (0, u64::MAX), (u64::MAX, u64::MAX)] {
        m.hart.sip = 0;
        assert_eq!(call(&mut m, eid::IPI, 0, [mask, base, 0]), (OK, 0));
        assert_eq!(m.hart.sip & SSIP, SSIP, "mask {mask:#x} base {base:#x}");
    }
    // An empty list: nothing, successfully.
    m.hart.sip = 0;
    assert_eq!(call(&mut m, eid::IPI, 0, [0, 7, 0]), (OK, 0));
    assert_eq!(m.hart.sip, 0);
    // Harts that do not exist, alone or with hart 0: refused, nothing sent.
    for (mask, base) in [
        (2, 0),
        (3, 0),
        (1, 1),
        (u64::MAX, 0),
        (1 << 63, u64::MAX - 1),
        (1, u64::MAX - 1),
    ] {
        assert_eq!(
            call(&mut m, eid::IPI, 0, [mask, base, 0]).0,
            INVALID,
            "mask {mask:#x} base {base:#x}"
        );
        assert_eq!(m.hart.sip, 0);
    }
}

#[test]
fn rfence_checks_the_hart_list_and_refuses_hypervisor_fences() {
    let (mut m, _) = machine();
    for fid in 0..=2 {
        assert_eq!(call(&mut m, eid::RFENCE, fid, [1, 0, 0]), (OK, 0));
        assert_eq!(call(&mut m, eid::RFENCE, fid, [0, u64::MAX, 0]), (OK, 0));
        assert_eq!(call(&mut m, eid::RFENCE, fid, [0, 0, 0]), (OK, 0));
        assert_eq!(call(&mut m, eid::RFENCE, fid, [2, 0, 0]).0, INVALID);
        assert_eq!(call(&mut m, eid::RFENCE, fid, [1, 5, 0]).0, INVALID);
    }
    for fid in [3, 4, 5, 6, 7, u64::MAX] {
        assert_eq!(call(&mut m, eid::RFENCE, fid, [1, 0, 0]).0, UNSUPPORTED);
    }
}

#[test]
fn hsm_has_one_started_hart() {
    let (mut m, _) = machine();
    // hart_start: hart 0 is running; other IDs do not exist.
    assert_eq!(
        call(&mut m, eid::HSM, 0, [0, RAM_BASE, 0]).0,
        err::ALREADY_AVAILABLE
    );
    assert_eq!(call(&mut m, eid::HSM, 0, [1, RAM_BASE, 0]).0, INVALID);
    assert_eq!(call(&mut m, eid::HSM, 0, [u64::MAX, 0, 0]).0, INVALID);
    // hart_stop of the only hart.
    assert_eq!(call(&mut m, eid::HSM, 1, [0; 3]).0, err::FAILED);
    assert_eq!(m.hart.exit, None);
    // hart_get_status.
    assert_eq!(call(&mut m, eid::HSM, 2, [0; 3]), (OK, 0));
    assert_eq!(call(&mut m, eid::HSM, 2, [1, 0, 0]).0, INVALID);
    assert_eq!(call(&mut m, eid::HSM, 2, [u64::MAX, 0, 0]).0, INVALID);
    assert_eq!(call(&mut m, eid::HSM, 4, [0; 3]).0, UNSUPPORTED);
}

#[test]
fn hsm_suspend_retentive_waits_others_refused() {
    let (mut m, _) = machine();
    assert_eq!(call(&mut m, eid::HSM, 3, [0, 0, 0]), (OK, 0));
    assert!(
        m.hart.wfi,
        "retentive suspend waits for an interrupt like WFI"
    );
    m.hart.wfi = false;
    assert_eq!(
        call(&mut m, eid::HSM, 3, [0x8000_0000, RAM_BASE, 0]).0,
        UNSUPPORTED
    );
    // Reserved, platform-specific and out-of-range types.
    for t in [
        1,
        0x0fff_ffff,
        0x1000_0000,
        0x7fff_ffff,
        0x8000_0001,
        1 << 32,
        u64::MAX,
    ] {
        assert_eq!(
            call(&mut m, eid::HSM, 3, [t, RAM_BASE, 0]).0,
            INVALID,
            "{t:#x}"
        );
    }
    assert!(!m.hart.wfi);
}

#[test]
fn srst_shutdown_and_reboots_end_the_run() {
    for (ty, reason, exit) in [
        (0, 0, ExitReason::PowerOff),
        (0, 1, ExitReason::PowerOff),
        (1, 0, ExitReason::Reboot),
        (2, 1, ExitReason::Reboot),
        (2, 0xe000_0000, ExitReason::Reboot),
        (0, 0xffff_ffff, ExitReason::PowerOff),
    ] {
        let (mut m, _) = machine();
        assert_eq!(call(&mut m, eid::SRST, 0, [ty, reason, 0]), (OK, 0));
        assert_eq!(m.hart.exit, Some(exit), "type {ty} reason {reason:#x}");
    }
}

#[test]
fn srst_refuses_reserved_and_vendor_types_and_reasons() {
    let (mut m, _) = machine();
    for (ty, reason, e) in [
        (3, 0, INVALID),
        (0xefff_ffff, 0, INVALID),
        (0xf000_0000, 0, UNSUPPORTED),
        (1 << 32, 0, INVALID),
        (u64::MAX, 0, INVALID),
        (0, 2, INVALID),
        (0, 0xdfff_ffff, INVALID),
        (1, 1 << 32, INVALID),
    ] {
        assert_eq!(
            call(&mut m, eid::SRST, 0, [ty, reason, 0]).0,
            e,
            "{ty:#x} {reason:#x}"
        );
        assert_eq!(m.hart.exit, None);
    }
    assert_eq!(call(&mut m, eid::SRST, 1, [0; 3]).0, UNSUPPORTED);
    assert_eq!(m.hart.exit, None);
}

#[test]
fn dbcn_console_write_reads_guest_memory() {
    let (mut m, sink) = machine();
    let buf = RAM_BASE + 0x1000;
    m.memory()
        .write_slice(b"hello, sbi", GuestAddress(buf))
        .unwrap();
    assert_eq!(call(&mut m, eid::DBCN, 0, [10, buf, 0]), (OK, 10));
    assert_eq!(
        call(&mut m, eid::DBCN, 2, [0x100 | u64::from(b'!'), 0, 0]),
        (OK, 0)
    );
    // Zero bytes: valid, nothing written.
    assert_eq!(call(&mut m, eid::DBCN, 0, [0, buf, 0]), (OK, 0));
    // The last byte of RAM.
    m.memory()
        .write_slice(b"$", GuestAddress(RAM_BASE + RAM - 1))
        .unwrap();
    assert_eq!(
        call(&mut m, eid::DBCN, 0, [1, RAM_BASE + RAM - 1, 0]),
        (OK, 1)
    );
    assert_eq!(&*sink.0.lock().unwrap(), b"hello, sbi!$");
}

#[test]
fn dbcn_console_write_is_bounded_per_call() {
    let (mut m, sink) = machine();
    let len = DBCN_MAX_BYTES * 3 + 5;
    assert_eq!(
        call(&mut m, eid::DBCN, 0, [len, RAM_BASE, 0]),
        (OK, DBCN_MAX_BYTES)
    );
    assert_eq!(sink.0.lock().unwrap().len() as u64, DBCN_MAX_BYTES);
    // All of RAM at once: checked whole, moved in part.
    assert_eq!(
        call(&mut m, eid::DBCN, 0, [RAM, RAM_BASE, 0]),
        (OK, DBCN_MAX_BYTES)
    );
}

#[test]
fn dbcn_refuses_memory_outside_ram() {
    let (mut m, sink) = machine();
    for (len, lo, hi) in [
        (1, 0, 0),
        (1, RAM_BASE - 1, 0),
        (2, RAM_BASE + RAM - 1, 0),
        (1, RAM_BASE + RAM, 0),
        (RAM + 1, RAM_BASE, 0),
        (u64::MAX, RAM_BASE, 0),
        (u64::MAX, u64::MAX, u64::MAX),
        (2, u64::MAX, 0),
        (1, RAM_BASE, 1),
        (0, u64::MAX, 0),
        (16, crate::layout::UART_BASE, 0),
    ] {
        for fid in 0..=1 {
            assert_eq!(
                call(&mut m, eid::DBCN, fid, [len, lo, hi]).0,
                INVALID,
                "fid {fid} len {len:#x} lo {lo:#x} hi {hi:#x}"
            );
        }
    }
    assert!(sink.0.lock().unwrap().is_empty());
    assert_eq!(call(&mut m, eid::DBCN, 3, [0; 3]).0, UNSUPPORTED);
}

#[test]
fn dbcn_console_read_takes_waiting_input() {
    let (mut m, _) = machine();
    let buf = RAM_BASE + 0x2000;
    // Nothing waiting: 0 bytes, memory untouched.
    m.memory().write_slice(b"zzzz", GuestAddress(buf)).unwrap();
    assert_eq!(call(&mut m, eid::DBCN, 1, [4, buf, 0]), (OK, 0));
    m.console_input().push(b"abcdef");
    assert_eq!(call(&mut m, eid::DBCN, 1, [4, buf, 0]), (OK, 4));
    let mut got = [0u8; 4];
    m.memory().read_slice(&mut got, GuestAddress(buf)).unwrap();
    assert_eq!(&got, b"abcd");
    assert_eq!(call(&mut m, eid::DBCN, 1, [4, buf, 0]), (OK, 2));
    m.memory().read_slice(&mut got, GuestAddress(buf)).unwrap();
    assert_eq!(&got, b"efcd");
    // A refused read consumes nothing.
    m.console_input().push(b"x");
    assert_eq!(call(&mut m, eid::DBCN, 1, [1, 0, 0]).0, INVALID);
    assert_eq!(call(&mut m, eid::DBCN, 1, [1, buf, 0]), (OK, 1));
}

#[test]
fn legacy_calls_answer_in_a0_only() {
    let (mut m, sink) = machine();
    assert_eq!(
        call(&mut m, eid::LEGACY_PUTCHAR, 0, [u64::from(b'L'), 0x5555, 0]).0,
        0
    );
    assert_eq!(m.hart.x[11], 0x5555, "legacy calls leave a1 alone");
    assert_eq!(call(&mut m, eid::LEGACY_GETCHAR, 0, [0; 3]).0, -1);
    m.console_input().push(b"q");
    assert_eq!(
        call(&mut m, eid::LEGACY_GETCHAR, 0, [0; 3]).0,
        i64::from(b'q')
    );
    call(&mut m, eid::LEGACY_SEND_IPI, 0, [0; 3]);
    assert_eq!(m.hart.sip & SSIP, SSIP);
    call(&mut m, eid::LEGACY_CLEAR_IPI, 0, [0; 3]);
    assert_eq!(m.hart.sip & SSIP, 0);
    assert_eq!(&*sink.0.lock().unwrap(), b"L");
    call(&mut m, eid::LEGACY_SHUTDOWN, 0, [0; 3]);
    assert_eq!(m.hart.exit, Some(ExitReason::PowerOff));
}

/// Interesting values for a guest-controlled register: RAM edges, zero, all ones, and
/// anything.
fn reg() -> impl proptest::strategy::Strategy<Value = u64> {
    use proptest::prelude::*;
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(RAM_BASE),
        Just(RAM_BASE + RAM - 1),
        Just(RAM_BASE + RAM),
        Just(RAM),
        (0u64..16),
        any::<u64>(),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    /// Any call with any arguments answers with an SBI error code, without panicking,
    /// and never moves more than DBCN_MAX_BYTES.
    #[test]
    fn any_call_is_answered(
        ext in proptest::prop_oneof![
            proptest::strategy::Just(eid::BASE),
            proptest::strategy::Just(eid::TIME),
            proptest::strategy::Just(eid::IPI),
            proptest::strategy::Just(eid::RFENCE),
            proptest::strategy::Just(eid::HSM),
            proptest::strategy::Just(eid::SRST),
            proptest::strategy::Just(eid::DBCN),
            0u64..=8,
            proptest::prelude::any::<u64>(),
        ],
        fid in proptest::prop_oneof![0u64..8, proptest::prelude::any::<u64>()],
        a0 in reg(),
        a1 in reg(),
        a2 in reg(),
    ) {
        let (mut m, sink) = machine();
        m.console_input().push(b"typed");
        let (error, value) = call(&mut m, ext, fid, [a0, a1, a2]);
        if ext > eid::LEGACY_SHUTDOWN {
            proptest::prop_assert!(
                [0, -1, -2, -3, -6].contains(&error),
                "error {error}"
            );
        }
        if ext == eid::DBCN && error == OK {
            proptest::prop_assert!(value <= DBCN_MAX_BYTES);
        }
        proptest::prop_assert!(sink.0.lock().unwrap().len() as u64 <= DBCN_MAX_BYTES);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    /// DBCN with guest-chosen lengths and addresses: refused exactly when the range is not
    /// all RAM (or base_addr_hi is set), else moves min(len, DBCN_MAX_BYTES) bytes.
    #[test]
    fn dbcn_moves_only_ram_and_at_most_the_cap(
        fid in 0u64..2,
        len in proptest::prop_oneof![0u64..3 * DBCN_MAX_BYTES, 0..=RAM + 1, proptest::prelude::any::<u64>()],
        lo in proptest::prop_oneof![RAM_BASE - 16..RAM_BASE + RAM + 16, proptest::prelude::any::<u64>()],
        hi in proptest::prop_oneof![proptest::strategy::Just(0u64), proptest::prelude::any::<u64>()],
    ) {
        let (mut m, sink) = machine();
        m.console_input().push(&[b'i'; 100]);
        let in_ram = hi == 0
            && lo >= RAM_BASE
            && lo.checked_add(len).is_some_and(|end| end <= RAM_BASE + RAM);
        let (error, value) = call(&mut m, eid::DBCN, fid, [len, lo, hi]);
        if in_ram {
            proptest::prop_assert_eq!(error, OK);
            let moved = if fid == 0 { len.min(DBCN_MAX_BYTES) } else { len.min(100) };
            proptest::prop_assert_eq!(value, moved);
            let written = sink.0.lock().unwrap().len() as u64;
            proptest::prop_assert_eq!(written, if fid == 0 { moved } else { 0 });
        } else {
            proptest::prop_assert_eq!(error, INVALID);
            proptest::prop_assert!(sink.0.lock().unwrap().is_empty());
        }
    }
}
