//! The physical memory map, following QEMU's `virt` board (`hw/riscv/virt.c`) so that a
//! kernel and device tree habits carry over: the same PLIC, UART and virtio-mmio slot
//! addresses and interrupt numbers, RAM at 2 GiB.
//!
//! All addresses are guest-physical byte addresses; all windows are half-open
//! `[base, base + size)`.

/// Start of RAM (bytes, guest-physical).
pub const RAM_BASE: u64 = 0x8000_0000;
/// Default RAM size: 256 MiB.
pub const DEFAULT_RAM_SIZE: u64 = 256 << 20;
/// Largest RAM size accepted: 16 GiB (the window up to the end of the Sv39-friendly range).
pub const MAX_RAM_SIZE: u64 = 16 << 30;

/// PLIC window base (`sifive,plic-1.0.0`).
pub const PLIC_BASE: u64 = 0x0c00_0000;
/// PLIC window size in bytes (as QEMU `virt`).
pub const PLIC_SIZE: u64 = 0x60_0000;
/// Number of PLIC interrupt sources (`riscv,ndev`): sources are 1..=63, 0 means "none".
pub const PLIC_NUM_SOURCES: u32 = 63;

/// ns16550a UART window base.
pub const UART_BASE: u64 = 0x1000_0000;
/// UART window size in bytes (registers are 1 byte apart, `reg-shift` 0).
pub const UART_SIZE: u64 = 0x100;
/// UART PLIC source.
pub const UART_IRQ: u32 = 10;
/// UART input clock in Hz, as advertised in the device tree (QEMU's value).
pub const UART_CLOCK_HZ: u32 = 3_686_400;

/// First reserved virtio-mmio slot (QEMU `virt` puts its eight transports here).
pub const VIRTIO_MMIO_BASE: u64 = 0x1000_1000;
/// Size and stride of one virtio-mmio slot in bytes (virtio v1.4 §4.2.2 registers fit in 0x1000).
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// Number of reserved virtio-mmio slots.
pub const VIRTIO_MMIO_SLOTS: u32 = 8;
/// PLIC source of slot 0; slot `n` uses `VIRTIO_MMIO_IRQ_BASE + n` (1..=8).
pub const VIRTIO_MMIO_IRQ_BASE: u32 = 1;

/// The `time` CSR frequency and the device tree's `timebase-frequency`: 10 MHz, as QEMU `virt`.
pub const TIMEBASE_HZ: u64 = 10_000_000;

/// Offset of the kernel `Image` from [`RAM_BASE`]: 2 MiB, the RV64 `text_offset`.
pub const KERNEL_OFFSET: u64 = 0x20_0000;

/// Base address and PLIC source of reserved virtio-mmio slot `slot` (0-based), or `None`
/// when `slot >= VIRTIO_MMIO_SLOTS`.
pub fn virtio_mmio_slot(slot: u32) -> Option<(u64, u32)> {
    if slot >= VIRTIO_MMIO_SLOTS {
        return None;
    }
    Some((
        VIRTIO_MMIO_BASE + u64::from(slot) * VIRTIO_MMIO_SIZE,
        VIRTIO_MMIO_IRQ_BASE + slot,
    ))
}
