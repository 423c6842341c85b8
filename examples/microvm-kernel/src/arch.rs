//! x86_64 platform pieces: port I/O, the TSS with interrupt stacks, the
//! IDT and its entry stubs, the legacy PIC (masked), the local APIC and
//! the I/O APIC, and QEMU's `isa-debug-exit`.

use core::arch::{asm, global_asm};
use core::ptr::{addr_of, addr_of_mut};

/// Writes one byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O touches no memory; the ports used here (COM1, the
    // PICs, isa-debug-exit) belong to this kernel alone.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack)) }
}

/// Reads one byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as in `outb`.
    unsafe { asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack)) };
    v
}

/// Ends the VM through QEMU's `isa-debug-exit` device (I/O port 0xf4):
/// QEMU exits with status `(code << 1) | 1`.
pub fn exit_qemu(code: u32) -> ! {
    // SAFETY: as in `outb`; the device takes a 32-bit write.
    unsafe { asm!("out dx, eax", in("dx") 0xf4u16, in("eax") code, options(nomem, nostack)) };
    loop {
        halt_forever();
    }
}

fn halt_forever() {
    // SAFETY: stops the CPU with interrupts off; touches no memory.
    unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
}

/// Waits for the next interrupt with interrupts enabled only while halted:
/// `sti` takes effect after the following instruction, so an interrupt
/// that became pending while they were off is taken at the `hlt`, never
/// lost between a check and the halt.
pub fn wait_for_interrupt() {
    // SAFETY: the handlers save every register they use and run on their
    // own stacks (IST); they touch only state guarded by `IrqCell`.
    unsafe { asm!("sti", "hlt", "cli", options(nostack)) }
}

// ---------------------------------------------------------------------
// TSS and interrupt stacks

/// Interrupt stack table slot for CPU exceptions.
const IST_EXCEPTIONS: u8 = 1;
/// Interrupt stack table slot for device and timer interrupts.
const IST_IRQS: u8 = 2;
const IST_BYTES: usize = 32 * 1024;

#[repr(C, align(16))]
struct Stack([u8; IST_BYTES]);
static mut EXCEPTION_STACK: Stack = Stack([0; IST_BYTES]);
static mut IRQ_STACK: Stack = Stack([0; IST_BYTES]);

/// The 64-bit TSS (104 bytes): only the IST pointers are used.
#[repr(C, packed)]
struct Tss {
    _reserved0: u32,
    rsp: [u64; 3],
    _reserved1: u64,
    ist: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    iomap_base: u16,
}
static mut TSS: Tss = Tss {
    _reserved0: 0,
    rsp: [0; 3],
    _reserved1: 0,
    ist: [0; 7],
    _reserved2: 0,
    _reserved3: 0,
    iomap_base: 104,
};

extern "C" {
    /// The GDT of boot.rs: null, code 0x08, data 0x10, TSS 0x18 (two slots).
    static mut gdt64: [u64; 5];
    /// The interrupt entry stubs below, one per vector.
    static isr_table: [u64; 256];
}

// ---------------------------------------------------------------------
// IDT

#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    _reserved: u32,
}
static mut IDT: [Gate; 256] = [Gate {
    offset_low: 0,
    selector: 0,
    ist: 0,
    type_attr: 0,
    offset_mid: 0,
    offset_high: 0,
    _reserved: 0,
}; 256];

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// Loads the TSS (with its two interrupt stacks) and an IDT whose 256
/// vectors all enter `interrupt_entry` (exceptions on one stack, the rest
/// on another), then masks the legacy PIC.
pub fn init() {
    // SAFETY: runs once, on the only CPU, with interrupts off, before any
    // other code touches these statics.
    unsafe {
        let tss = addr_of_mut!(TSS);
        (*tss).ist[usize::from(IST_EXCEPTIONS - 1)] =
            addr_of!(EXCEPTION_STACK) as u64 + IST_BYTES as u64;
        (*tss).ist[usize::from(IST_IRQS - 1)] = addr_of!(IRQ_STACK) as u64 + IST_BYTES as u64;
        let base = tss as u64;
        let limit = (core::mem::size_of::<Tss>() - 1) as u64;
        // Available 64-bit TSS (type 9), present.
        let low = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89 << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56);
        let gdt = addr_of_mut!(gdt64);
        (*gdt)[3] = low;
        (*gdt)[4] = base >> 32;
        asm!("ltr ax", in("ax") 0x18u16, options(nostack));

        let idt = addr_of_mut!(IDT);
        let table = addr_of!(isr_table);
        for (v, gate) in (*idt).iter_mut().enumerate() {
            let handler = (*table)[v];
            *gate = Gate {
                offset_low: handler as u16,
                selector: 0x08,
                ist: if v < 32 { IST_EXCEPTIONS } else { IST_IRQS },
                type_attr: 0x8e, // present, DPL 0, 64-bit interrupt gate
                offset_mid: (handler >> 16) as u16,
                offset_high: (handler >> 32) as u32,
                _reserved: 0,
            };
        }
        let ptr = DescriptorPointer {
            limit: (core::mem::size_of::<[Gate; 256]>() - 1) as u16,
            base: idt as u64,
        };
        asm!("lidt [{}]", in(reg) &ptr, options(nostack));
    }
    mask_pic();
}

/// Remaps the two 8259 PICs away from the exception vectors (0x20..0x30)
/// and masks every line: interrupts come through the I/O APIC only.
fn mask_pic() {
    for (cmd, data, base, cascade) in [(0x20, 0x21, 0x20, 4), (0xa0, 0xa1, 0x28, 2)] {
        outb(cmd, 0x11); // ICW1: init, ICW4 follows
        outb(data, base); // ICW2: vector base
        outb(data, cascade); // ICW3
        outb(data, 0x01); // ICW4: 8086 mode
        outb(data, 0xff); // mask all
    }
}

/// What an entry stub saved, as `interrupt_entry` sees it.
#[repr(C)]
pub struct Frame {
    /// r11, r10, r9, r8, rdi, rsi, rdx, rcx, rax.
    pub regs: [u64; 9],
    /// The vector number.
    pub vector: u64,
    /// The CPU's error code, or 0.
    pub error: u64,
    /// Where the interrupt hit.
    pub rip: u64,
    /// Code segment at the interrupt.
    pub cs: u64,
    /// RFLAGS at the interrupt.
    pub rflags: u64,
    /// Stack pointer at the interrupt.
    pub rsp: u64,
    /// Stack segment at the interrupt.
    pub ss: u64,
}

// One stub per vector pushes a 0 error code where the CPU pushes none, then
// the vector; the common part saves the caller-saved registers and the SSE
// state (Rust code uses SSE registers), calls `interrupt_entry(&Frame)`
// with a 16-byte aligned stack, and restores. Callee-saved registers are
// preserved by `interrupt_entry` itself (C ABI).
global_asm!(
    r#"
    .section .text
    .macro stub n
    .p2align 4
isr_\n:
    .if (\n == 8) || (\n >= 10 && \n <= 14) || (\n == 17) || (\n == 21) || (\n == 29) || (\n == 30)
    .else
    push 0
    .endif
    push \n
    jmp isr_common
    .endm

    .altmacro
    .set i, 0
    .rept 256
    stub %i
    .set i, i + 1
    .endr

isr_common:
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    mov rdi, rsp
    sub rsp, 512
    fxsave [rsp]
    call interrupt_entry
    fxrstor [rsp]
    add rsp, 512
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    add rsp, 16
    iretq

    .macro entry n
    .quad isr_\n
    .endm
    .section .rodata
    .p2align 3
    .global isr_table
isr_table:
    .set i, 0
    .rept 256
    entry %i
    .set i, i + 1
    .endr
    .noaltmacro
"#
);

// ---------------------------------------------------------------------
// Local APIC and I/O APIC (xAPIC MMIO at their reset addresses)

const LAPIC: usize = 0xfee0_0000;
const LAPIC_TPR: usize = 0x80;
const LAPIC_EOI: usize = 0xb0;
const LAPIC_SVR: usize = 0xf0;
const LAPIC_LVT_TIMER: usize = 0x320;
const LAPIC_LVT_LINT0: usize = 0x350;
const LAPIC_LVT_LINT1: usize = 0x360;
const LAPIC_TIMER_INIT: usize = 0x380;
const LAPIC_TIMER_DIVIDE: usize = 0x3e0;
const IOAPIC: usize = 0xfec0_0000;

/// Vector of the spurious interrupt (the local APIC's SVR).
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// Vector of the local APIC timer, the watchdog of every wait (above the
/// masked PICs' 0x20..0x30, below the devices' 0x40..).
pub const TIMER_VECTOR: u8 = 0x30;

fn lapic_write(reg: usize, value: u32) {
    // SAFETY: the local APIC's registers are at their reset address,
    // identity-mapped uncached by boot.rs; 32-bit aligned accesses.
    unsafe { ((LAPIC + reg) as *mut u32).write_volatile(value) }
}

/// Enables the local APIC (spurious vector 0xff), masks LINT0/LINT1 (the
/// PIC's path) and accepts every priority.
pub fn lapic_init() {
    lapic_write(LAPIC_LVT_LINT0, 1 << 16);
    lapic_write(LAPIC_LVT_LINT1, 1 << 16);
    lapic_write(LAPIC_TPR, 0);
    lapic_write(LAPIC_SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
}

/// Signals the end of the interrupt being handled to the local APIC (for
/// a level-triggered line the I/O APIC then re-samples it).
pub fn lapic_eoi() {
    lapic_write(LAPIC_EOI, 0);
}

/// Arms the local APIC timer once: it fires after `ticks` × 16 ns on QEMU
/// (a 1 GHz APIC timer clock divided by 16).
pub fn arm_watchdog(ticks: u32) {
    lapic_write(LAPIC_TIMER_DIVIDE, 0x3); // divide by 16
    lapic_write(LAPIC_LVT_TIMER, u32::from(TIMER_VECTOR)); // one-shot
    lapic_write(LAPIC_TIMER_INIT, ticks);
}

/// Stops the watchdog.
pub fn disarm_watchdog() {
    lapic_write(LAPIC_TIMER_INIT, 0);
}

fn ioapic_write(reg: u32, value: u32) {
    // SAFETY: the I/O APIC's index/data registers at its reset address,
    // identity-mapped uncached; the index write selects the register the
    // data write reaches, and nothing else uses the pair.
    unsafe {
        (IOAPIC as *mut u32).write_volatile(reg);
        ((IOAPIC + 0x10) as *mut u32).write_volatile(value);
    }
}

/// Routes I/O APIC input `gsi` to `vector` on CPU 0 (local APIC ID 0):
/// fixed delivery, level-triggered, active high, unmasked. Virtio-mmio
/// lines stay raised while `InterruptStatus` is non-zero.
pub fn ioapic_route(gsi: u32, vector: u8) {
    let index = 0x10 + 2 * gsi;
    ioapic_write(index + 1, 0); // destination: APIC ID 0
    ioapic_write(index, u32::from(vector) | (1 << 15));
}
