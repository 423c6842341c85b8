//! What every freestanding Rust kernel needs and this one keeps minimal:
//! the C memory functions, a heap, a serial console, a logger, a cell
//! shared with interrupt handlers, and the panic handler.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::arch::{exit_qemu, inb, outb};

// The compiler emits calls to these; without a C library we bring them.
// Written in assembly so that the compiler cannot turn their loops back
// into calls to themselves.
core::arch::global_asm!(
    r#"
    .section .text
    .global memcpy
memcpy:
    mov rax, rdi
    mov rcx, rdx
    rep movsb
    ret

    .global memset
memset:
    mov r8, rdi
    movzx eax, sil
    mov rcx, rdx
    rep stosb
    mov rax, r8
    ret

    .global memmove
memmove:
    mov rax, rdi
    mov rcx, rdx
    cmp rdi, rsi
    jbe 1f
    lea rsi, [rsi + rdx - 1]
    lea rdi, [rdi + rdx - 1]
    std
    rep movsb
    cld
    ret
1:  rep movsb
    ret

    .global strlen
strlen:
    mov rax, rdi
4:  cmp byte ptr [rax], 0
    je 5f
    inc rax
    jmp 4b
5:  sub rax, rdi
    ret

    .global memcmp
    .global bcmp
memcmp:
bcmp:
    xor eax, eax
    test rdx, rdx
    jz 3f
2:  movzx eax, byte ptr [rdi]
    movzx ecx, byte ptr [rsi]
    sub eax, ecx
    jnz 3f
    inc rdi
    inc rsi
    dec rdx
    jnz 2b
3:  ret
"#
);

/// Heap size in bytes.
const HEAP_BYTES: usize = 8 << 20;

/// A bump allocator over a static arena: allocation moves a cursor,
/// freeing is a no-op. Enough for a kernel that sets its devices up once;
/// a long-running kernel plugs in a real allocator here.
struct Bump {
    arena: UnsafeCell<[u8; HEAP_BYTES]>,
    next: AtomicUsize,
}

// SAFETY: the cursor is atomic, and each byte of the arena is handed out
// at most once, so no two users share memory.
unsafe impl Sync for Bump {}

// SAFETY: `alloc` returns a block of `layout.size()` bytes aligned to
// `layout.align()` inside the arena, never handed out before, or null.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = self.arena.get() as usize;
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let Some(start) = (base + cur).checked_next_multiple_of(layout.align()) else {
                return core::ptr::null_mut();
            };
            let end = start - base + layout.size();
            if end > HEAP_BYTES {
                return core::ptr::null_mut();
            }
            match self
                .next
                .compare_exchange(cur, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return start as *mut u8,
                Err(now) => cur = now,
            }
        }
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static HEAP: Bump = Bump {
    arena: UnsafeCell::new([0; HEAP_BYTES]),
    next: AtomicUsize::new(0),
};

/// COM1, the microvm's ISA serial port.
const COM1: u16 = 0x3f8;

/// The serial port: 115200 8N1, polled.
pub struct Serial;

impl Serial {
    /// Programs COM1.
    pub fn init() {
        outb(COM1 + 1, 0x00); // no UART interrupts
        outb(COM1 + 3, 0x80); // DLAB
        outb(COM1, 0x01); // divisor 1: 115200 baud
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x03); // 8N1
        outb(COM1 + 2, 0xc7); // FIFO on
    }

    fn put(b: u8) {
        for _ in 0..100_000 {
            if inb(COM1 + 5) & 0x20 != 0 {
                break;
            }
        }
        outb(COM1, b);
    }
}

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                Serial::put(b'\r');
            }
            Serial::put(b);
        }
        Ok(())
    }
}

/// Prints to the serial port.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::support::Serial, $($arg)*);
    }};
}

/// Sends the driver's `log` records (warnings and errors) to the serial
/// port.
struct SerialLog;

impl log::Log for SerialLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            crate::println!("{}: {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

/// Installs the serial logger.
pub fn init_log() {
    static LOG: SerialLog = SerialLog;
    if log::set_logger(&LOG).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

/// State shared by the main flow and interrupt handlers on this one CPU.
///
/// The kernel runs with interrupts disabled except inside
/// [`crate::arch::wait_for_interrupt`], and handlers run with them
/// disabled too: so `with` is never re-entered, and the `&mut` it hands
/// out is unique. `with` disables interrupts itself all the same.
pub struct IrqCell<T>(UnsafeCell<T>);

// SAFETY: one CPU, and every access goes through `with`, which runs with
// interrupts disabled and is never nested (see the type's docs).
unsafe impl<T> Sync for IrqCell<T> {}

impl<T> IrqCell<T> {
    /// A cell holding `value`.
    pub const fn new(value: T) -> Self {
        Self(UnsafeCell::new(value))
    }

    /// Runs `f` on the contents with interrupts disabled.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let flags: u64;
        // SAFETY: reads RFLAGS and clears IF; touches no memory.
        unsafe { core::arch::asm!("pushfq", "pop {}", "cli", out(reg) flags) };
        // SAFETY: interrupts are off and `with` is not re-entered (type
        // docs), so this is the only reference to the contents.
        let r = f(unsafe { &mut *self.0.get() });
        if flags & (1 << 9) != 0 {
            // SAFETY: restores the interrupt flag as it was.
            unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
        }
        r
    }
}

/// Exit status (before QEMU's `(code << 1) | 1`) of a failed run.
pub const EXIT_FAILURE: u32 = 1;

// The precompiled `alloc` of the x86_64-unknown-linux-gnu target was built
// with unwinding and names these two symbols; with `panic = "abort"` no
// unwinding ever starts, so they are never reached.
/// Never called: nothing unwinds.
#[no_mangle]
extern "C" fn _Unwind_Resume() -> ! {
    exit_qemu(EXIT_FAILURE)
}
/// Never called: nothing unwinds.
#[no_mangle]
extern "C" fn rust_eh_personality() {}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    crate::println!("PANIC: {info}");
    exit_qemu(EXIT_FAILURE)
}
