//! A software RISC-V machine that boots an unmodified Linux kernel, for meeting vmmio's
//! virtio-mmio devices with a real driver.
//!
//! - One hart: RV64IMAFDC + Zicsr + Zifencei, S and U modes, Sv39 ([`Machine`], internals in
//!   `hart`); no M-mode: the machine answers the SBI itself (`sbi`).
//! - QEMU-`virt`-like platform ([`layout`]): RAM at 0x8000_0000 as a
//!   [`vm_memory::GuestMemoryMmap`] ([`Machine::memory`]), a `sifive,plic-1.0.0` PLIC, an
//!   ns16550a UART, and device windows added with [`Machine::add_mmio_device`], interrupting
//!   through [`IrqLine`]s and described to the guest with [`DeviceNode`]s.
//! - A device tree built with `vm-fdt` and a Linux `Image` loader ([`Machine::load_linux`]).
//!
//! Threat model: the guest chooses every instruction, address and register value. Nothing it
//! does panics the host or ends [`Machine::run`]; faults become guest exceptions as the
//! privileged spec defines them.
//!
//! ```no_run
//! use vmmio_machine::{DeviceNode, Machine, MachineConfig, MmioDevice, layout};
//!
//! struct Nothing;
//! impl MmioDevice for Nothing {
//!     fn read(&mut self, _offset: u64, data: &mut [u8]) { data.fill(0) }
//!     fn write(&mut self, _offset: u64, _data: &[u8]) {}
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut m = Machine::new(MachineConfig::default())?;
//! let (base, irq) = layout::virtio_mmio_slot(0).expect("slot 0 exists");
//! let _line = m.irq_line(irq)?; // hand this to the device
//! m.add_mmio_device(base, layout::VIRTIO_MMIO_SIZE, Box::new(Nothing))?;
//! m.add_device_node(DeviceNode::virtio_mmio(base, irq));
//! let kernel = std::fs::read("Image")?;
//! m.load_linux(&kernel, None, "console=ttyS0")?;
//! let reason = m.run()?;
//! # let _ = reason; Ok(()) }
//! ```

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod bus;
mod compressed;
pub mod decode;
mod fdt;
mod fpu;
pub mod guest;
mod hart;
pub mod layout;
mod machine;
mod plic;
pub mod profile;
mod sbi;
mod trap_loop;
mod uart;
pub mod virtio;

#[cfg(test)]
mod tests;

/// This crate's README examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub use bus::MmioDevice;
pub use fdt::DeviceNode;
pub use hart::Privilege;
pub use machine::{BootInfo, Machine, MachineConfig, StopHandle};
pub use plic::IrqLine;
pub use profile::{Profile, SymbolMap};
pub use trap_loop::TRAP_LOOP_LIMIT;
pub use uart::ConsoleInput;
pub use virtio::{
    BoxedVirtioDevice, LevelIrq, VirtioHandle, VirtioSlot, VirtioStats, VirtioWindow,
};
pub use vmmio_device::{ExecMode, TransportVersion};

/// Why [`Machine::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitReason {
    /// The guest asked for shutdown (SBI SRST shutdown, or legacy SBI shutdown).
    PowerOff,
    /// The guest asked for a cold or warm reboot (SBI SRST).
    Reboot,
    /// [`MachineConfig::instruction_limit`] instructions ran.
    InstructionLimit,
    /// [`MachineConfig::timeout`] elapsed.
    Timeout,
    /// A [`StopHandle`] asked the machine to stop.
    Stopped,
    /// The guest took the same synchronous trap [`TRAP_LOOP_LIMIT`] times in
    /// a row without completing an instruction (e.g. its trap vector itself
    /// faults): it cannot make progress, so the machine stopped it.
    TrapLoop {
        /// `scause` of the trap.
        cause: u64,
        /// Where the hart was stuck (`sepc`), a guest virtual address.
        pc: u64,
        /// `stval` of the trap.
        tval: u64,
    },
}

/// Host-side errors of the machine (the guest's misdeeds are guest exceptions, never these).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The RAM size is zero, not a multiple of 4 KiB, or above [`layout::MAX_RAM_SIZE`].
    #[error("RAM size {0:#x} bytes is not a non-zero multiple of 4 KiB up to 16 GiB")]
    RamSize(u64),
    /// A device's worker thread (or its eventfds) could not be created.
    #[error("cannot start a device worker")]
    Worker(#[source] std::io::Error),
    /// The host could not map guest RAM.
    #[error("cannot map guest RAM")]
    Memory(#[source] vm_memory::mmap::FromRangesError),
    /// A device window of length 0, or one that wraps around the address space.
    #[error("device window at {base:#x} of {len:#x} bytes is empty or wraps")]
    InvalidWindow {
        /// Requested base address.
        base: u64,
        /// Requested length in bytes.
        len: u64,
    },
    /// A device window intersects RAM or another window.
    #[error(
        "device window at {base:#x} of {len:#x} bytes overlaps {other_base:#x}+{other_len:#x}"
    )]
    Overlap {
        /// Requested base address.
        base: u64,
        /// Requested length in bytes.
        len: u64,
        /// Base of the region it overlaps.
        other_base: u64,
        /// Length in bytes of the region it overlaps.
        other_len: u64,
    },
    /// A PLIC source number outside 1..=63.
    #[error("PLIC source {0} is not in 1..=63")]
    InvalidIrq(u32),
    /// A boot image does not fit in RAM.
    #[error("the {what} ({size} bytes) does not fit in guest RAM")]
    NoRoom {
        /// Which image: "kernel", "initrd" or "device tree".
        what: &'static str,
        /// Its size in bytes.
        size: u64,
    },
    /// Writing a boot image into guest RAM failed.
    #[error("cannot write to guest RAM")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
    /// Every reserved virtio-mmio slot ([`layout::VIRTIO_MMIO_SLOTS`]) is taken.
    #[error("all {} virtio-mmio slots are taken", layout::VIRTIO_MMIO_SLOTS)]
    NoVirtioSlot,
    /// The device tree could not be built.
    #[error("cannot build the device tree")]
    Fdt(#[source] vm_fdt::Error),
    /// A boot image file could not be opened or read
    /// ([`Machine::load_linux_files`]).
    #[error("cannot read {}", path.display())]
    ImageFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}
