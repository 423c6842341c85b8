//! The machine: hart + bus + PLIC + UART + device tree + Linux loader, and the run loop.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::bus::{Bus, MmioDevice, Ram};
use crate::fdt::{self, DeviceNode, FdtParams};
use crate::hart::{Hart, Privilege};
use crate::layout::{
    DEFAULT_RAM_SIZE, KERNEL_OFFSET, PLIC_NUM_SOURCES, RAM_BASE, TIMEBASE_HZ, UART_IRQ,
};
use crate::plic::{IrqLine, IrqShared, Plic};
use crate::profile::Profile;
use crate::uart::{ConsoleInput, Uart};
use crate::virtio::VirtioHandle;
use crate::{Error, ExitReason};
use vmmio_device::ExecMode;

/// Instructions run between two interrupt/timer checks (at 50 MIPS: about 80 µs).
const BATCH: u64 = 4096;
/// Longest single sleep in WFI, so that timeouts and exits are noticed.
const MAX_WFI_SLEEP: Duration = Duration::from_millis(10);
/// Longest single sleep in WFI while synchronous devices' backend fds are polled: bounds
/// the latency a packet waits in a socket before the device sees it.
const SYNC_POLL_SLEEP: Duration = Duration::from_millis(1);

/// How to build a [`Machine`].
pub struct MachineConfig {
    /// RAM size in bytes: a non-zero multiple of 4 KiB, at most
    /// [`crate::layout::MAX_RAM_SIZE`]. Default 256 MiB.
    pub ram_size: u64,
    /// Where guest console output goes (UART transmit and SBI console putchar). Default:
    /// host stdout. Each byte is written and flushed at once.
    pub console: Box<dyn Write + Send>,
    /// Feed host stdin to the UART from a reader thread. Default `false`.
    pub stdin: bool,
    /// If set, one line per executed instruction (`0x<pc>:  <raw>  <mnemonic>`, QEMU
    /// `-d in_asm` column order) and one per trap go here. Slows the machine down a lot.
    pub trace: Option<Box<dyn Write + Send>>,
    /// Stop with [`ExitReason::InstructionLimit`] after about this many instructions.
    pub instruction_limit: Option<u64>,
    /// Stop with [`ExitReason::Timeout`] after this much host wall-clock time in
    /// [`Machine::run`].
    pub timeout: Option<Duration>,
    /// Where devices added with [`Machine::add_virtio_device`] run their queues. Default
    /// [`ExecMode::Worker`]: one thread per device, so the hart keeps running guest code
    /// while the host does I/O. [`ExecMode::Sync`] runs a device inside the guest's
    /// `QueueNotify` store and polls its backend fds between instruction batches.
    pub exec: ExecMode,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            ram_size: DEFAULT_RAM_SIZE,
            console: Box::new(std::io::stdout()),
            stdin: false,
            trace: None,
            instruction_limit: None,
            timeout: None,
            exec: ExecMode::Worker,
        }
    }
}

impl std::fmt::Debug for MachineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineConfig")
            .field("ram_size", &self.ram_size)
            .field("stdin", &self.stdin)
            .field("trace", &self.trace.is_some())
            .field("instruction_limit", &self.instruction_limit)
            .field("timeout", &self.timeout)
            .field("exec", &self.exec)
            .finish_non_exhaustive()
    }
}

/// Where [`Machine::load_linux`] put things (guest-physical byte addresses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// Kernel load address and entry point.
    pub kernel_addr: u64,
    /// End of the kernel's memory footprint (`image_size` from the Image header, or the file
    /// size when larger), exclusive.
    pub kernel_end: u64,
    /// `[start, end)` of the initramfs, if any.
    pub initrd: Option<(u64, u64)>,
    /// Device tree address (passed in a1).
    pub dtb_addr: u64,
    /// Device tree size in bytes.
    pub dtb_len: u64,
}

/// A boot image: bytes the caller holds, or a file read straight into guest RAM.
enum BootImage<'a> {
    Bytes(&'a [u8]),
    File {
        path: &'a Path,
        file: File,
        /// Length in bytes.
        len: u64,
        /// The first [`ImageHeader::LEN`] bytes (fewer for a shorter file).
        head: Vec<u8>,
    },
}

impl<'a> BootImage<'a> {
    fn open(path: &'a Path) -> Result<Self, Error> {
        let image_error = |source| Error::ImageFile {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(image_error)?;
        let len = file.metadata().map_err(image_error)?.len();
        let mut head = Vec::with_capacity(ImageHeader::LEN);
        (&mut file)
            .take(ImageHeader::LEN as u64)
            .read_to_end(&mut head)
            .map_err(image_error)?;
        Ok(Self::File {
            path,
            file,
            len,
            head,
        })
    }

    fn len(&self) -> u64 {
        match self {
            Self::Bytes(b) => b.len() as u64,
            Self::File { len, .. } => *len,
        }
    }

    fn head(&self) -> &[u8] {
        match self {
            Self::Bytes(b) => b,
            Self::File { head, .. } => head,
        }
    }
}

/// The fields of the RISC-V Linux `Image` header that matter here
/// (Linux `Documentation/riscv/boot-image-header.rst`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ImageHeader {
    text_offset: u64,
    image_size: u64,
}

impl ImageHeader {
    /// Magic "RSC\x05" at byte 56.
    const MAGIC2: u32 = 0x0543_5352;
    /// Bytes of the header.
    const LEN: usize = 64;

    fn parse(image: &[u8]) -> Option<Self> {
        let u64_at = |o: usize| {
            image
                .get(o..o + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
        };
        let magic2 = image
            .get(56..60)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)?;
        if magic2 != Self::MAGIC2 {
            return None;
        }
        Some(Self {
            text_offset: u64_at(8)?,
            image_size: u64_at(16)?,
        })
    }
}

/// A software RISC-V machine (RV64IMAFDC, S/U modes, Sv39, SBI, PLIC, ns16550a) modelled on
/// QEMU `virt`; see the [crate docs](crate) for the memory map.
///
/// Typical use: [`Machine::new`], then optionally [`Machine::irq_line`],
/// [`Machine::add_mmio_device`] and [`Machine::add_device_node`] for each device, then
/// [`Machine::load_linux`] (which writes the device tree) and [`Machine::run`].
pub struct Machine {
    pub(crate) hart: Hart,
    irq: Arc<IrqShared>,
    nodes: Vec<DeviceNode>,
    instruction_limit: Option<u64>,
    timeout: Option<Duration>,
    /// Instructions attempted in `run` (including trapping ones).
    executed: u64,
    run_time: Duration,
    idle_time: Duration,
    /// Where [`Machine::add_virtio_device`] runs devices.
    pub(crate) exec: ExecMode,
    /// Windows whose devices run synchronously: their backend fds are polled between
    /// batches.
    pub(crate) polled: Vec<VirtioHandle>,
    /// Set by a [`StopHandle`]: `run` returns [`ExitReason::Stopped`].
    stop: Arc<AtomicBool>,
    /// The guest profile, when [`Machine::enable_profile`] was called.
    profile: Option<Profile>,
    /// `executed` at which the next profile sample is taken (`u64::MAX` when off).
    next_sample: u64,
}

/// Ends a [`Machine::run`] from another thread (e.g. a terminal's escape key or a signal):
/// the run returns [`ExitReason::Stopped`] within one batch of instructions or one WFI
/// sleep. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StopHandle {
    stop: Arc<AtomicBool>,
    irq: Arc<IrqShared>,
}

impl StopHandle {
    /// Asks the machine to stop; a run in progress returns soon, a later run at once.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the hart if it sleeps in WFI.
        self.irq.notify();
    }
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("pc", &self.hart.pc)
            .field("ram_size", &self.hart.bus.ram.len())
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl Machine {
    /// Creates a machine with zeroed RAM, the PLIC and the UART. The hart starts in S-mode at
    /// [`RAM_BASE`] with paging off and interrupts disabled.
    ///
    /// # Errors
    /// [`Error::RamSize`] for a bad size, [`Error::Memory`] when the host cannot map it.
    pub fn new(config: MachineConfig) -> Result<Self, Error> {
        let ram = Ram::new(config.ram_size)?;
        let irq = Arc::new(IrqShared::default());
        let plic = Plic::new(irq.clone());
        let uart = Uart::new(config.console, IrqLine::new(irq.clone(), UART_IRQ));
        if config.stdin {
            spawn_stdin_reader(uart.input());
        }
        let bus = Bus::new(ram, plic, uart);
        let mut hart = Hart::new(bus, irq.clone());
        hart.pc = RAM_BASE;
        hart.trace = config.trace;
        Ok(Self {
            hart,
            irq,
            nodes: Vec::new(),
            instruction_limit: config.instruction_limit,
            timeout: config.timeout,
            executed: 0,
            run_time: Duration::ZERO,
            idle_time: Duration::ZERO,
            exec: config.exec,
            polled: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            profile: None,
            next_sample: u64::MAX,
        })
    }

    /// Guest RAM, for devices that DMA into it (virtio rings and buffers) and for loading
    /// images. It starts at [`RAM_BASE`]; clones share the same memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        self.hart.bus.ram.memory()
    }

    /// RAM size in bytes.
    pub fn ram_size(&self) -> u64 {
        self.hart.bus.ram.len()
    }

    /// Bytes of guest RAM resident in host memory now (pages touched by the guest, the
    /// loader or devices; RAM is mapped lazily, so untouched pages cost nothing).
    ///
    /// # Errors
    /// The `mincore(2)` error.
    pub fn ram_resident_bytes(&self) -> std::io::Result<u64> {
        self.hart.bus.ram.resident_bytes()
    }

    /// Maps `device` at the half-open window `[base, base + len)` (guest-physical bytes).
    /// Guest loads and stores inside it reach the device with window-relative offsets and the
    /// instruction's access width; see [`MmioDevice`].
    ///
    /// # Errors
    /// [`Error::InvalidWindow`] when `len` is 0 or the window wraps; [`Error::Overlap`] when it
    /// intersects RAM, the PLIC, the UART or an earlier window.
    pub fn add_mmio_device(
        &mut self,
        base: u64,
        len: u64,
        device: Box<dyn MmioDevice>,
    ) -> Result<(), Error> {
        self.hart.bus.add(base, len, device)
    }

    /// Whether the half-open window `[base, base + len)` is free: non-empty, not wrapping,
    /// clear of RAM, the PLIC, the UART and every added window.
    pub fn window_is_free(&self, base: u64, len: u64) -> bool {
        self.hart.bus.is_free(base, len)
    }

    /// A handle on PLIC interrupt source `source` (1..=63; 10 is the UART's, 1..=8 are the
    /// reserved virtio-mmio slots').
    ///
    /// # Errors
    /// [`Error::InvalidIrq`] outside 1..=63.
    pub fn irq_line(&self, source: u32) -> Result<IrqLine, Error> {
        if source == 0 || source > PLIC_NUM_SOURCES {
            return Err(Error::InvalidIrq(source));
        }
        Ok(IrqLine::new(self.irq.clone(), source))
    }

    /// Adds a node under `/soc` in the device tree written by [`Machine::load_linux`] (call
    /// before it), e.g. [`DeviceNode::virtio_mmio`] for a transport added with
    /// [`Machine::add_mmio_device`].
    pub fn add_device_node(&mut self, node: DeviceNode) {
        self.nodes.push(node);
    }

    /// A handle that feeds bytes to the guest console's receive side.
    pub fn console_input(&self) -> ConsoleInput {
        self.hart.bus.uart.input()
    }

    /// A handle that ends [`Machine::run`] from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            stop: self.stop.clone(),
            irq: self.irq.clone(),
        }
    }

    /// The device tree blob for this machine's nodes, `cmdline` and `initrd` range.
    ///
    /// # Errors
    /// [`Error::Fdt`] if the blob cannot be built (e.g. a string with a NUL byte).
    pub fn device_tree(&self, cmdline: &str, initrd: Option<(u64, u64)>) -> Result<Vec<u8>, Error> {
        fdt::build(&FdtParams {
            ram_size: self.ram_size(),
            cmdline,
            initrd,
            nodes: &self.nodes,
            rng_seed: &rng_seed(),
        })
        .map_err(Error::Fdt)
    }

    /// Loads a RISC-V Linux `Image` at RAM + 2 MiB (the header's `text_offset` when it has
    /// one), the initramfs at the next 2 MiB boundary after the kernel's `image_size`, and the
    /// device tree near the top of RAM (2 MiB aligned when there is room, else 8-byte
    /// aligned); then points the hart at the kernel as the RISC-V Linux boot protocol asks
    /// (`Documentation/riscv/boot.rst`): S-mode, a0 = hart ID 0, a1 = device tree address,
    /// `satp` = 0, interrupts disabled.
    ///
    /// # Errors
    /// [`Error::NoRoom`] when the images do not fit in RAM; [`Error::Fdt`],
    /// [`Error::GuestMemory`] when writing them fails.
    pub fn load_linux(
        &mut self,
        kernel: &[u8],
        initrd: Option<&[u8]>,
        cmdline: &str,
    ) -> Result<BootInfo, Error> {
        self.load(
            BootImage::Bytes(kernel),
            initrd.map(BootImage::Bytes),
            cmdline,
        )
    }

    /// [`Machine::load_linux`] with the kernel `Image` and the initramfs read from files
    /// straight into guest RAM: no host-side copy of the images, so the process's peak
    /// memory does not carry them twice (Debian's uncompressed `Image` is 31 MB).
    ///
    /// # Errors
    /// [`Error::ImageFile`] when a file cannot be opened or read, else as
    /// [`Machine::load_linux`].
    pub fn load_linux_files(
        &mut self,
        kernel: &Path,
        initrd: Option<&Path>,
        cmdline: &str,
    ) -> Result<BootInfo, Error> {
        let kernel = BootImage::open(kernel)?;
        let initrd = initrd.map(BootImage::open).transpose()?;
        self.load(kernel, initrd, cmdline)
    }

    fn load(
        &mut self,
        mut kernel: BootImage<'_>,
        initrd: Option<BootImage<'_>>,
        cmdline: &str,
    ) -> Result<BootInfo, Error> {
        let ram_end = RAM_BASE + self.ram_size();
        let header = ImageHeader::parse(kernel.head());
        let text_offset = header
            .map(|h| h.text_offset)
            .filter(|&o| o != 0)
            .unwrap_or(KERNEL_OFFSET);
        let footprint = header.map_or(0, |h| h.image_size).max(kernel.len());
        let no_room = |what: &'static str, size: u64| Error::NoRoom { what, size };
        let kernel_addr = RAM_BASE
            .checked_add(text_offset)
            .filter(|a| a % 4096 == 0)
            .ok_or(no_room("kernel", footprint))?;
        let kernel_end = kernel_addr
            .checked_add(footprint)
            .filter(|&e| e <= ram_end)
            .ok_or(no_room("kernel", footprint))?;
        self.write_image(kernel_addr, &mut kernel)?;

        let mut used_end = kernel_end;
        let initrd_range = match initrd {
            Some(mut data) => {
                // 2 MiB: a kernel with STRICT_KERNEL_RWX (Debian's) reserves its image up to
                // the next PMD boundary and drops an initrd that overlaps the reservation.
                let start = align_up(kernel_end, 2 << 20).ok_or(no_room("initrd", 0))?;
                let end = start
                    .checked_add(data.len())
                    .filter(|&e| e <= ram_end)
                    .ok_or(no_room("initrd", data.len()))?;
                self.write_image(start, &mut data)?;
                used_end = end;
                Some((start, end))
            }
            None => None,
        };

        let dtb = self.device_tree(cmdline, initrd_range)?;
        let dtb_len = dtb.len() as u64;
        let top = ram_end
            .checked_sub(dtb_len)
            .ok_or(no_room("device tree", dtb_len))?;
        let mut dtb_addr = top & !((2 << 20) - 1);
        if dtb_addr < used_end {
            dtb_addr = top & !7;
        }
        if dtb_addr < used_end {
            return Err(no_room("device tree", dtb_len));
        }
        self.write(dtb_addr, &dtb)?;

        let h = &mut self.hart;
        h.x = [0; 32];
        h.x[10] = 0;
        h.x[11] = dtb_addr;
        h.pc = kernel_addr;
        h.sstatus = 0;
        h.sie = 0;
        h.sip = 0;
        h.csr_write(crate::hart::csr::SATP, 0);
        debug_assert_eq!(h.prv, Privilege::Supervisor);
        let info = BootInfo {
            kernel_addr,
            kernel_end,
            initrd: initrd_range,
            dtb_addr,
            dtb_len,
        };
        log::info!("loaded {info:x?}");
        Ok(info)
    }

    fn write_image(&self, addr: u64, image: &mut BootImage<'_>) -> Result<(), Error> {
        match image {
            BootImage::Bytes(data) => self.write(addr, data),
            BootImage::File {
                path, file, len, ..
            } => {
                let count = usize::try_from(*len).map_err(|_| Error::NoRoom {
                    what: "boot image",
                    size: *len,
                })?;
                let image_error = |source| Error::ImageFile {
                    path: path.to_path_buf(),
                    source,
                };
                std::io::Seek::rewind(file).map_err(image_error)?;
                self.memory()
                    .read_exact_volatile_from(GuestAddress(addr), file, count)
                    .map_err(Error::GuestMemory)
            }
        }
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), Error> {
        self.memory()
            .write_slice(data, GuestAddress(addr))
            .map_err(Error::GuestMemory)
    }

    /// Sets the program counter (guest virtual, 2-byte aligned: bit 0 is cleared).
    pub fn set_pc(&mut self, pc: u64) {
        self.hart.pc = pc & !1;
    }

    /// Program counter of the next instruction.
    pub fn pc(&self) -> u64 {
        self.hart.pc
    }

    /// Integer register `x{index}` (`index` 0..=31; others read 0).
    pub fn reg(&self, index: usize) -> u64 {
        self.hart.x.get(index).copied().unwrap_or(0)
    }

    /// Sets integer register `x{index}` (`index` 1..=31; others are ignored).
    pub fn set_reg(&mut self, index: usize, value: u64) {
        if index != 0 {
            if let Some(r) = self.hart.x.get_mut(index) {
                *r = value;
            }
        }
    }

    /// Instructions retired so far (the guest's `instret`).
    pub fn instructions_retired(&self) -> u64 {
        self.hart.instret
    }

    /// Host wall-clock time spent in [`Machine::run`] so far, including WFI sleeps.
    pub fn run_time(&self) -> Duration {
        self.run_time
    }

    /// Host wall-clock time the hart spent asleep in WFI during [`Machine::run`].
    pub fn idle_time(&self) -> Duration {
        self.idle_time
    }

    /// Guest `time` CSR value now (ticks of [`TIMEBASE_HZ`]).
    pub fn guest_time(&self) -> u64 {
        self.hart.time()
    }

    /// Samples the guest pc and privilege every `interval` instructions (at least 1) from
    /// now on, into a fresh [`Profile`] ([`Machine::profile`]). Costs one batch boundary
    /// per sample; nothing when not enabled.
    pub fn enable_profile(&mut self, interval: u64) {
        let p = Profile::new(interval);
        self.next_sample = self.executed.saturating_add(p.interval());
        self.profile = Some(p);
    }

    /// The guest profile, when enabled.
    pub fn profile(&self) -> Option<&Profile> {
        self.profile.as_ref()
    }

    /// Runs the hart until the guest powers off or reboots (through the SBI), or a limit of
    /// the [`MachineConfig`] is reached. Guest faults never end the run: they are exceptions
    /// for the guest kernel. May be called again after a limit was reached.
    ///
    /// # Errors
    /// None today; the `Result` leaves room for host-side failures.
    pub fn run(&mut self) -> Result<ExitReason, Error> {
        self.irq.register_waiter();
        // Memory may have been written since the last run (loader, embedder, DMA).
        self.hart.code_changed();
        let start = Instant::now();
        let deadline = self.timeout.map(|t| start + t);
        let tracing = self.hart.trace.is_some();
        let reason = loop {
            if let Some(e) = self.hart.exit.take() {
                break e;
            }
            if self.stop.swap(false, Ordering::SeqCst) {
                break ExitReason::Stopped;
            }
            if let Some(d) = deadline {
                if Instant::now() >= d {
                    break ExitReason::Timeout;
                }
            }
            for window in &self.polled {
                window.poll_backends();
            }
            self.hart.poll_interrupts();
            if self.hart.wfi {
                self.sleep_in_wfi(deadline);
                continue;
            }
            let mut budget = BATCH;
            if let Some(limit) = self.instruction_limit {
                let left = limit.saturating_sub(self.executed);
                if left == 0 {
                    break ExitReason::InstructionLimit;
                }
                budget = budget.min(left);
            }
            // Batches are exact: this one ends at the next sample point.
            budget = budget.min(self.next_sample.saturating_sub(self.executed).max(1));
            self.executed += if tracing {
                self.hart.run_batch::<true>(budget)
            } else {
                self.hart.run_batch::<false>(budget)
            };
            if self.executed >= self.next_sample {
                self.take_sample();
            }
        };
        self.run_time += start.elapsed();
        if let Some(t) = self.hart.trace.as_mut() {
            let _ = t.flush();
        }
        Ok(reason)
    }

    #[cold]
    fn take_sample(&mut self) {
        if let Some(p) = self.profile.as_mut() {
            p.record(self.hart.pc, self.hart.prv);
            self.next_sample = self.executed.saturating_add(p.interval());
        } else {
            self.next_sample = u64::MAX;
        }
    }

    fn sleep_in_wfi(&mut self, deadline: Option<Instant>) {
        let now = self.hart.time();
        let ticks = self.hart.timecmp.saturating_sub(now);
        // ticks * (1e9 / TIMEBASE_HZ) ns, saturating; capped below anyway.
        let nanos = ticks.saturating_mul(1_000_000_000 / TIMEBASE_HZ);
        let mut sleep = Duration::from_nanos(nanos).min(MAX_WFI_SLEEP);
        if !self.polled.is_empty() {
            // Synchronous devices' backend fds are polled between sleeps.
            sleep = sleep.min(SYNC_POLL_SLEEP);
        }
        if let Some(d) = deadline {
            sleep = sleep.min(d.saturating_duration_since(Instant::now()));
        }
        if !sleep.is_zero() {
            let t = Instant::now();
            self.irq.sleep(sleep);
            self.idle_time += t.elapsed();
        }
    }
}

/// 64 bytes for `/chosen/rng-seed`: from the host's `/dev/urandom`, or empty when it cannot
/// be read (the guest then gathers entropy itself, which is slow on an interpreter).
fn rng_seed() -> Vec<u8> {
    let mut seed = vec![0u8; 64];
    match File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed)) {
        Ok(()) => seed,
        Err(e) => {
            log::debug!("no rng-seed for the guest: {e}");
            Vec::new()
        }
    }
}

fn align_up(v: u64, align: u64) -> Option<u64> {
    Some(v.checked_add(align - 1)? & !(align - 1))
}

fn spawn_stdin_reader(input: ConsoleInput) {
    let spawned = std::thread::Builder::new()
        .name("vmmio-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 256];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => input.push(buf.get(..n).unwrap_or_default()),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::debug!("stdin reader stops: {e}");
                        break;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the stdin reader: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_header_is_parsed() {
        let mut img = vec![0u8; 64];
        img[8..16].copy_from_slice(&0x20_0000u64.to_le_bytes());
        img[16..24].copy_from_slice(&0x123_4000u64.to_le_bytes());
        img[56..60].copy_from_slice(b"RSC\x05");
        assert_eq!(
            ImageHeader::parse(&img),
            Some(ImageHeader {
                text_offset: 0x20_0000,
                image_size: 0x123_4000
            })
        );
        assert_eq!(ImageHeader::parse(&img[..40]), None);
        img[56] = 0;
        assert_eq!(ImageHeader::parse(&img), None);
    }

    #[test]
    fn load_linux_places_images_and_boot_registers() {
        let mut m = Machine::new(MachineConfig {
            ram_size: 64 << 20,
            console: Box::new(std::io::sink()),
            ..Default::default()
        })
        .unwrap();
        let mut kernel = vec![0u8; 8192];
        kernel[16..24].copy_from_slice(&(3u64 << 20).to_le_bytes());
        kernel[56..60].copy_from_slice(b"RSC\x05");
        let initrd = vec![7u8; 5000];
        let info = m
            .load_linux(&kernel, Some(&initrd), "console=ttyS0")
            .unwrap();
        assert_eq!(info.kernel_addr, 0x8020_0000);
        assert_eq!(info.kernel_end, 0x8050_0000);
        // The next 2 MiB boundary after the kernel.
        assert_eq!(info.initrd, Some((0x8060_0000, 0x8060_0000 + 5000)));
        assert!(
            info.dtb_addr.is_multiple_of(8)
                && info.dtb_addr + info.dtb_len <= RAM_BASE + (64 << 20)
        );
        assert_eq!(m.pc(), 0x8020_0000);
        assert_eq!((m.reg(10), m.reg(11)), (0, info.dtb_addr));
        let mut magic = [0u8; 4];
        m.memory()
            .read_slice(&mut magic, GuestAddress(info.dtb_addr))
            .unwrap();
        assert_eq!(magic, [0xd0, 0x0d, 0xfe, 0xed]);

        // Too large an initrd is an error, not a panic.
        let huge = vec![0u8; 64 << 20];
        assert!(matches!(
            m.load_linux(&kernel, Some(&huge), ""),
            Err(Error::NoRoom { .. })
        ));
    }

    #[test]
    fn load_linux_files_reads_the_images_into_ram_as_load_linux_places_them() {
        let machine = || {
            Machine::new(MachineConfig {
                ram_size: 64 << 20,
                console: Box::new(std::io::sink()),
                ..Default::default()
            })
            .unwrap()
        };
        let mut kernel: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i * 7 + 3) as u8).collect();
        kernel[8..16].fill(0); // text_offset 0: the default
        kernel[16..24].copy_from_slice(&(3u64 << 20).to_le_bytes());
        kernel[56..60].copy_from_slice(b"RSC\x05");
        let initrd: Vec<u8> = (0..5000).map(|i| (i * 13 + 1) as u8).collect();
        let dir = std::env::temp_dir().join(format!("vmmio-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (kp, ip) = (dir.join("Image"), dir.join("initramfs.cpio"));
        std::fs::write(&kp, &kernel).unwrap();
        std::fs::write(&ip, &initrd).unwrap();

        let mut from_bytes = machine();
        let want = from_bytes
            .load_linux(&kernel, Some(&initrd), "console=ttyS0")
            .unwrap();
        let mut from_files = machine();
        let got = from_files
            .load_linux_files(&kp, Some(&ip), "console=ttyS0")
            .unwrap();
        assert_eq!(got, want);
        let read = |m: &Machine, addr: u64, len: usize| {
            let mut v = vec![0u8; len];
            m.memory().read_slice(&mut v, GuestAddress(addr)).unwrap();
            v
        };
        assert_eq!(read(&from_files, got.kernel_addr, kernel.len()), kernel);
        let (start, _) = got.initrd.unwrap();
        assert_eq!(read(&from_files, start, initrd.len()), initrd);

        // A missing file names itself.
        let missing = dir.join("missing");
        let err = from_files.load_linux_files(&missing, None, "").unwrap_err();
        assert!(matches!(&err, Error::ImageFile { path, .. } if *path == missing));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn irq_lines_are_range_checked() {
        let m = Machine::new(MachineConfig {
            ram_size: 1 << 20,
            console: Box::new(std::io::sink()),
            ..Default::default()
        })
        .unwrap();
        assert!(m.irq_line(0).is_err());
        assert!(m.irq_line(64).is_err());
        assert_eq!(m.irq_line(63).unwrap().source(), 63);
    }
}
