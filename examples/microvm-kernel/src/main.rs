//! A freestanding x86_64 kernel that boots on QEMU's `microvm` machine
//! (PVH entry, TCG), finds its virtio-mmio devices on the command line
//! QEMU passes (`virtio_mmio.device=` entries, appended when the machine
//! has `acpi=off`), and drives them with `vmmio-driver`'s class drivers:
//! block (read, write, flush, GET_ID), entropy, console and network (one
//! frame out, the peer's reply in), each request completed by the
//! device's interrupt (I/O APIC -> handler that acknowledges
//! `InterruptStatus` and completes the request).
//!
//! It prints what it does on the serial port and leaves QEMU through
//! `isa-debug-exit`: status 85 (`0x2a << 1 | 1`) when everything held.
//! `crates/qtest/tests/bare_metal.rs` builds, boots and checks it.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

mod arch;
mod boot;
mod support;

use alloc::vec;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use vmmio_driver::blk::{Block, Request, SECTOR_SIZE};
use vmmio_driver::console::Console;
use vmmio_driver::discovery::cmdline_devices;
use vmmio_driver::net::Net;
use vmmio_driver::rng::Entropy;
use vmmio_driver::{Error, IdentityHal, MmioWindow, Transport};

use support::{IrqCell, EXIT_FAILURE};

/// `isa-debug-exit` code of a run where every check held.
const EXIT_SUCCESS: u32 = 0x2a;
/// The first vector given to a device; device `i` gets `DEVICE_VECTOR + i`.
const DEVICE_VECTOR: u8 = 0x40;
/// The watchdog of one request: about 30 s (see `arch::arm_watchdog`).
const WATCHDOG_TICKS: u32 = 1_875_000_000;
/// Bytes per block request this kernel makes.
const CHUNK: usize = 4096;
/// More device interrupts than this run could ever need: a storm.
const MAX_IRQS: u64 = 100_000;
/// Sector the kernel overwrites (the test checks the image file there).
const WRITE_SECTOR: u64 = 3;

/// A class driver over a real window; identity paging makes the driver's
/// `IdentityHal` (device address = pointer value) right for DMA.
// One per device, built once: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Driver {
    Block(Block<MmioWindow, IdentityHal>),
    Entropy(Entropy<MmioWindow, IdentityHal>),
    Console(Console<MmioWindow, IdentityHal>),
    Net(Net<MmioWindow, IdentityHal>),
}

/// One device and the request it has in flight.
struct Slot {
    driver: Driver,
    /// A request was started and its completion not yet taken.
    busy: bool,
    /// Set by the interrupt handler: the request's outcome (bytes
    /// returned), with the data in `data`.
    done: Option<Result<usize, Error>>,
    data: Vec<u8>,
}

static SLOTS: IrqCell<Vec<Slot>> = IrqCell::new(Vec::new());
/// Interrupts of the block, entropy and console devices taken.
static IRQS_HANDLED: AtomicU64 = AtomicU64::new(0);
/// Their requests whose completion an interrupt handler found.
static COMPLETED_BY_IRQ: AtomicU64 = AtomicU64::new(0);
/// Interrupts of network devices, counted apart: a transmit completion
/// and a received frame may or may not share one, so they cannot be
/// matched one to one with requests.
static NET_IRQS: AtomicU64 = AtomicU64::new(0);
/// Every device interrupt, for the storm guard.
static ALL_IRQS: AtomicU64 = AtomicU64::new(0);
static WATCHDOG_FIRED: AtomicBool = AtomicBool::new(false);

/// Entered from `boot.rs` in long mode with `start_info` the physical
/// address of the PVH `hvm_start_info`.
#[no_mangle]
extern "C" fn kmain(start_info: u32) -> ! {
    support::Serial::init();
    support::init_log();
    arch::init();
    arch::lapic_init();
    println!("vmmio microvm kernel: long mode, paging, SSE, IDT, APIC up");
    let cmdline = pvh_cmdline(start_info);
    println!("cmdline: {cmdline}");
    match run(cmdline) {
        Ok(()) => {
            println!("result: ok");
            arch::exit_qemu(EXIT_SUCCESS)
        }
        Err(e) => {
            println!("FAIL: {e}");
            arch::exit_qemu(EXIT_FAILURE)
        }
    }
}

/// The command line named by the PVH start info (`cmdline_paddr`, byte
/// offset 24, a NUL-terminated string), or "" when absent.
fn pvh_cmdline(start_info: u32) -> &'static str {
    const MAGIC: u32 = 0x336e_c578;
    let base = start_info as usize;
    // SAFETY: QEMU's PVH boot passes the address of an `hvm_start_info`
    // in RAM (identity-mapped); the magic is checked before anything else.
    let (magic, cmdline) = unsafe {
        (
            (base as *const u32).read_volatile(),
            ((base + 24) as *const u64).read_volatile(),
        )
    };
    if base == 0 || magic != MAGIC || cmdline == 0 {
        return "";
    }
    // SAFETY: the start info's command line is a NUL-terminated string in
    // RAM that nothing writes after boot.
    let c = unsafe { core::ffi::CStr::from_ptr(cmdline as usize as *const core::ffi::c_char) };
    c.to_str().unwrap_or("")
}

/// Finds, initialises and exercises every device; `Err` says what failed.
fn run(cmdline: &str) -> Result<(), alloc::string::String> {
    use alloc::format;
    for dev in cmdline_devices(cmdline) {
        let dev = dev.map_err(|e| format!("bad command line entry: {e}"))?;
        let (Ok(addr), Ok(size)) = (usize::try_from(dev.base), usize::try_from(dev.size)) else {
            return Err(format!("window {:#x} not addressable", dev.base));
        };
        let base = NonNull::new(addr as *mut u8).ok_or("window at 0")?;
        // SAFETY: QEMU maps a virtio-mmio window of `size` bytes at `base`
        // (identity-mapped, uncached by boot.rs), and this kernel makes one
        // `MmioWindow` per window.
        let window = unsafe { MmioWindow::new(base, size) };
        let Some(t) = Transport::probe(window).map_err(|e| format!("probe: {e}"))? else {
            continue;
        };
        let (id, version) = (t.device_id(), t.version());
        let driver = match id {
            2 => Driver::Block(Block::new(t, IdentityHal).map_err(|e| format!("blk: {e}"))?),
            3 => Driver::Console(Console::new(t, IdentityHal).map_err(|e| format!("con: {e}"))?),
            4 => Driver::Entropy(Entropy::new(t, IdentityHal).map_err(|e| format!("rng: {e}"))?),
            1 => Driver::Net(Net::new(t, IdentityHal).map_err(|e| format!("net: {e}"))?),
            _ => continue,
        };
        let index = SLOTS.with(|s| {
            s.push(Slot {
                driver,
                busy: false,
                done: None,
                data: vec![0; CHUNK],
            });
            s.len() - 1
        });
        let vector = DEVICE_VECTOR + u8::try_from(index).map_err(|_| "too many devices")?;
        arch::ioapic_route(dev.irq, vector);
        println!(
            "found: device {id} at {:#x} irq {} ({version:?}), vector {vector:#x}",
            dev.base, dev.irq
        );
    }
    let slots = SLOTS.with(|s| s.len());
    let mut requests = 0u64;
    for i in 0..slots {
        requests += match SLOTS.with(|s| kind(&s[i].driver)) {
            Kind::Block => exercise_block(i)?,
            Kind::Entropy => exercise_entropy(i)?,
            Kind::Console => exercise_console(i)?,
            Kind::Net => {
                // Counted apart, like its interrupts (see NET_IRQS).
                exercise_net(i)?;
                0
            }
        };
    }
    let irqs = IRQS_HANDLED.load(Ordering::Relaxed);
    let by_irq = COMPLETED_BY_IRQ.load(Ordering::Relaxed);
    println!("interrupts: handled {irqs}, requests {requests}, completed by interrupt {by_irq}");
    if requests == 0 || by_irq != requests || irqs != by_irq {
        return Err(format!(
            "{irqs} interrupts, {requests} requests, {by_irq} completed by interrupt"
        ));
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Kind {
    Block,
    Entropy,
    Console,
    Net,
}

fn kind(d: &Driver) -> Kind {
    match d {
        Driver::Block(_) => Kind::Block,
        Driver::Entropy(_) => Kind::Entropy,
        Driver::Console(_) => Kind::Console,
        Driver::Net(_) => Kind::Net,
    }
}

fn block(d: &mut Driver) -> &mut Block<MmioWindow, IdentityHal> {
    match d {
        Driver::Block(b) => b,
        _ => unreachable!("slot kinds never change"),
    }
}

/// FNV-1a, 64 bits: the test recomputes it over the image file.
fn fnv1a64(h: u64, data: &[u8]) -> u64 {
    data.iter()
        .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The 512 bytes written to [`WRITE_SECTOR`] (the test expects the same).
fn write_pattern() -> Vec<u8> {
    (0..SECTOR_SIZE)
        .map(|j| (j as u8).wrapping_mul(31) ^ 0x5a)
        .collect()
}

/// GET_ID, a read of the whole disk, a write, its read-back, a flush.
/// Returns the number of requests made.
fn exercise_block(i: usize) -> Result<u64, alloc::string::String> {
    use alloc::format;
    let (capacity, flush) = SLOTS.with(|s| {
        let b = block(&mut s[i].driver);
        (b.capacity(), b.supports_flush())
    });
    let mut n = 0;
    let id = request(i, |d| block(d).start(Request::GetId))?;
    n += 1;
    let end = id.iter().position(|&c| c == 0).unwrap_or(id.len());
    println!(
        "blk: id {:?}",
        core::str::from_utf8(&id[..end]).unwrap_or("?")
    );
    let bytes = capacity * SECTOR_SIZE as u64;
    let mut hash = FNV_OFFSET;
    let mut sector = 0;
    while sector < capacity {
        let len = (capacity - sector).min((CHUNK / SECTOR_SIZE) as u64) as usize * SECTOR_SIZE;
        let data = request(i, |d| block(d).start(Request::Read { sector, len }))?;
        if data.len() != len {
            return Err(format!("blk: read {} bytes of {len}", data.len()));
        }
        hash = fnv1a64(hash, &data);
        sector += (len / SECTOR_SIZE) as u64;
        n += 1;
    }
    println!("blk: read {bytes} bytes, fnv1a64 {hash:#018x}");
    let pattern = write_pattern();
    request(i, |d| {
        block(d).start(Request::Write {
            sector: WRITE_SECTOR,
            data: &pattern,
        })
    })?;
    let back = request(i, |d| {
        block(d).start(Request::Read {
            sector: WRITE_SECTOR,
            len: SECTOR_SIZE,
        })
    })?;
    n += 2;
    if back != pattern {
        return Err("blk: read-back differs from what was written".into());
    }
    println!("blk: wrote sector {WRITE_SECTOR} and read it back");
    if flush {
        request(i, |d| block(d).start(Request::Flush))?;
        n += 1;
        println!("blk: flushed");
    }
    Ok(n)
}

/// One entropy request.
fn exercise_entropy(i: usize) -> Result<u64, alloc::string::String> {
    let bytes = request(i, |d| match d {
        Driver::Entropy(e) => e.start(32),
        _ => unreachable!("slot kinds never change"),
    })?;
    if bytes.is_empty() {
        return Err("rng: no bytes".into());
    }
    print_hex("rng", &bytes);
    Ok(1)
}

/// The console's message, checked in the chardev file by the test.
const CONSOLE_MESSAGE: &[u8] = b"hello from the vmmio bare-metal kernel\n";

/// One console write.
fn exercise_console(i: usize) -> Result<u64, alloc::string::String> {
    request(i, |d| match d {
        Driver::Console(c) => c.start_write(CONSOLE_MESSAGE),
        _ => unreachable!("slot kinds never change"),
    })?;
    println!("con: wrote {} bytes", CONSOLE_MESSAGE.len());
    Ok(1)
}

/// EtherType of the frames exchanged with the test (IEEE local
/// experimental).
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
/// Payload of the frame the kernel sends (zero-padded to 60 bytes).
const NET_PAYLOAD: &[u8] = b"vmmio bare-metal frame";

/// Sends one broadcast frame, then waits for the peer's reply, which the
/// interrupt handler takes from the receive queue.
fn exercise_net(i: usize) -> Result<(), alloc::string::String> {
    let (mac, link) = SLOTS.with(|s| match &s[i].driver {
        Driver::Net(n) => (n.mac(), n.link_up()),
        _ => unreachable!("slot kinds never change"),
    });
    let mut frame = vec![0u8; 60];
    frame[..6].fill(0xff);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&ETHERTYPE);
    frame[14..14 + NET_PAYLOAD.len()].copy_from_slice(NET_PAYLOAD);
    println!(
        "net: mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, link {}",
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5],
        if link { "up" } else { "down" }
    );
    let reply = request(i, |d| match d {
        Driver::Net(n) => n.transmit(&frame),
        _ => unreachable!("slot kinds never change"),
    })?;
    println!("net: sent {} bytes", frame.len());
    if reply.len() < 14 || reply[..6] != mac || reply[12..14] != ETHERTYPE {
        return Err("net: the reply is not addressed to us".into());
    }
    let payload = &reply[14..];
    let end = payload
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(payload.len());
    println!(
        "net: reply {:?} received by interrupt (net interrupts {})",
        core::str::from_utf8(&payload[..end]).unwrap_or("?"),
        NET_IRQS.load(Ordering::Relaxed)
    );
    Ok(())
}

fn print_hex(what: &str, bytes: &[u8]) {
    use core::fmt::Write as _;
    let mut s = alloc::string::String::new();
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    println!("{what}: {} bytes {s}", bytes.len());
}

/// Starts a request on device `i` with `start`, then sleeps until the
/// interrupt handler has completed it (or the watchdog fires). Returns
/// the bytes the device returned.
fn request(
    i: usize,
    start: impl FnOnce(&mut Driver) -> Result<(), Error>,
) -> Result<Vec<u8>, alloc::string::String> {
    SLOTS
        .with(|s| {
            let slot = &mut s[i];
            start(&mut slot.driver)?;
            slot.busy = true;
            slot.done = None;
            Ok::<(), Error>(())
        })
        .map_err(|e| alloc::format!("start: {e}"))?;
    WATCHDOG_FIRED.store(false, Ordering::Relaxed);
    arch::arm_watchdog(WATCHDOG_TICKS);
    loop {
        let done = SLOTS.with(|s| {
            let slot = &mut s[i];
            slot.done
                .take()
                .map(|r| r.map(|n| slot.data[..n.min(CHUNK)].to_vec()))
        });
        if let Some(r) = done {
            arch::disarm_watchdog();
            return r.map_err(|e| alloc::format!("request: {e}"));
        }
        if WATCHDOG_FIRED.load(Ordering::Relaxed) {
            return Err("no completion interrupt within the watchdog".into());
        }
        arch::wait_for_interrupt();
    }
}

/// The interrupt handler of device `i`: acknowledges `InterruptStatus`
/// (the class driver's `handle_interrupt`), then completes the request in
/// flight if the device used it.
fn device_interrupt(i: usize) {
    // A line that stays raised (InterruptStatus never acknowledged) would
    // starve everything else, the watchdog included: give up instead.
    if ALL_IRQS.fetch_add(1, Ordering::Relaxed) > MAX_IRQS {
        println!("FAIL: interrupt storm on device {i}");
        arch::exit_qemu(EXIT_FAILURE);
    }
    SLOTS.with(|s| {
        let Some(slot) = s.get_mut(i) else { return };
        let counted = !matches!(slot.driver, Driver::Net(_));
        if counted {
            IRQS_HANDLED.fetch_add(1, Ordering::Relaxed);
        } else {
            NET_IRQS.fetch_add(1, Ordering::Relaxed);
        }
        let out = &mut slot.data;
        let done = match &mut slot.driver {
            Driver::Block(b) => b.handle_interrupt().and_then(|_| b.poll(out)),
            Driver::Entropy(e) => e.handle_interrupt().and_then(|_| e.poll(out)),
            Driver::Console(c) => c
                .handle_interrupt()
                .and_then(|_| c.poll_write())
                .map(|sent| sent.then_some(0)),
            // A request is done when a frame came in (the peer's reply).
            Driver::Net(n) => n.handle_interrupt().and_then(|_| {
                n.receive(|f| {
                    let k = f.len().min(out.len());
                    out[..k].copy_from_slice(&f[..k]);
                    k
                })
            }),
        };
        if !slot.busy {
            return;
        }
        match done {
            Ok(None) => {}
            Ok(Some(n)) => {
                slot.busy = false;
                slot.done = Some(Ok(n));
                if counted {
                    COMPLETED_BY_IRQ.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                slot.busy = false;
                slot.done = Some(Err(e));
            }
        }
    });
}

/// Entered from the stubs in `arch.rs` for every vector.
#[no_mangle]
extern "C" fn interrupt_entry(frame: &arch::Frame) {
    let v = frame.vector;
    match v {
        0..=31 => {
            println!(
                "exception {v} error {:#x} at rip {:#x} rsp {:#x}",
                frame.error, frame.rip, frame.rsp
            );
            arch::exit_qemu(EXIT_FAILURE)
        }
        _ if v == u64::from(arch::SPURIOUS_VECTOR) => return,
        _ if v == u64::from(arch::TIMER_VECTOR) => WATCHDOG_FIRED.store(true, Ordering::Relaxed),
        _ if v >= u64::from(DEVICE_VECTOR) => {
            device_interrupt((v - u64::from(DEVICE_VECTOR)) as usize)
        }
        _ => println!("unexpected vector {v}"),
    }
    arch::lapic_eoi();
}
