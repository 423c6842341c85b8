//! Register access: the [`RegisterIo`] trait and [`MmioWindow`], its
//! volatile implementation over a real memory-mapped window.
//!
//! Everything above this module (probe, handshake, queues, class drivers)
//! reaches the device only through [`RegisterIo`], so the same driver runs
//! over real MMIO, a scripted fake register file in tests, or a loopback
//! into the device side (`vmmio-device`) in one process.

use core::ptr::NonNull;

use vmmio_spec::mmio;

/// 32-bit control-register and 8/16/32-bit config-space access to one
/// virtio-mmio window (virtio v1.4 §4.2.2).
///
/// # Contract
///
/// The driver promises (virtio v1.4 §4.2.2.2):
/// - control-register offsets are below `0x100` and multiples of 4, and
///   every control access is one 32-bit access;
/// - config offsets are relative to the start of the configuration space
///   (window offset `0x100`), and each access has the width of the field
///   (8, 16 or 32 bits), aligned to that width, except on legacy devices,
///   which the driver reads and writes byte by byte.
///
/// An implementation promises that each call is exactly one access of that
/// width at that offset, in program order: a register read may have side
/// effects on the device and must not be cached, merged or repeated.
/// Values are little-endian on the bus (§4.2.2: "All register values are
/// organized as Little Endian") and are returned as native integers.
///
/// Methods take `&mut self` so that fakes and loopbacks need no interior
/// mutability; they cannot fail (a bus error is a platform matter).
pub trait RegisterIo {
    /// Reads the 32-bit control register at `offset` bytes from the base.
    fn read_reg(&mut self, offset: u64) -> u32;
    /// Writes `value` to the 32-bit control register at `offset` bytes.
    fn write_reg(&mut self, offset: u64, value: u32);
    /// Reads the 8-bit config field at `offset` bytes into the config space.
    fn read_config_u8(&mut self, offset: u64) -> u8;
    /// Reads the 16-bit config field at `offset` (2-byte aligned) with one
    /// 16-bit access.
    fn read_config_u16(&mut self, offset: u64) -> u16;
    /// Reads the 32-bit config field at `offset` (4-byte aligned) with one
    /// 32-bit access.
    fn read_config_u32(&mut self, offset: u64) -> u32;
    /// Writes the 8-bit config field at `offset`.
    fn write_config_u8(&mut self, offset: u64, value: u8);
    /// Writes the 16-bit config field at `offset` (2-byte aligned).
    fn write_config_u16(&mut self, offset: u64, value: u16);
    /// Writes the 32-bit config field at `offset` (4-byte aligned).
    fn write_config_u32(&mut self, offset: u64, value: u32);
}

impl<T: RegisterIo + ?Sized> RegisterIo for &mut T {
    fn read_reg(&mut self, offset: u64) -> u32 {
        (**self).read_reg(offset)
    }
    fn write_reg(&mut self, offset: u64, value: u32) {
        (**self).write_reg(offset, value)
    }
    fn read_config_u8(&mut self, offset: u64) -> u8 {
        (**self).read_config_u8(offset)
    }
    fn read_config_u16(&mut self, offset: u64) -> u16 {
        (**self).read_config_u16(offset)
    }
    fn read_config_u32(&mut self, offset: u64) -> u32 {
        (**self).read_config_u32(offset)
    }
    fn write_config_u8(&mut self, offset: u64, value: u8) {
        (**self).write_config_u8(offset, value)
    }
    fn write_config_u16(&mut self, offset: u64, value: u16) {
        (**self).write_config_u16(offset, value)
    }
    fn write_config_u32(&mut self, offset: u64, value: u32) {
        (**self).write_config_u32(offset, value)
    }
}

/// A real virtio-mmio register window, accessed with volatile loads and
/// stores.
///
/// The window is `size` bytes long (device trees usually say 0x200 or
/// 0x1000); control registers occupy the first 0x100 bytes and the config
/// space the rest. An access outside the window or misaligned for its
/// width is a driver bug: it is dropped (reads return 0) and logged, never
/// performed.
///
/// # Example
///
/// ```no_run
/// use core::ptr::NonNull;
/// use vmmio_driver::{IdentityHal, MmioWindow, Transport};
///
/// fn probe_slot(base: usize) {
///     let ptr = NonNull::new(base as *mut u8).expect("non-null base");
///     // SAFETY: the platform maps a virtio-mmio window of 0x200 bytes at
///     // `base`, and nothing else uses it.
///     let window = unsafe { MmioWindow::new(ptr, 0x200) };
///     match Transport::probe(window) {
///         Ok(Some(t)) => log::info!("device {} found", t.device_id()),
///         Ok(None) => {} // empty slot
///         Err(e) => log::warn!("not a virtio device: {e}"),
///     }
/// }
/// ```
#[derive(Debug)]
pub struct MmioWindow {
    base: NonNull<u8>,
    size: usize,
}

// SAFETY: an MmioWindow owns exclusive access to its register window (the
// promise of `MmioWindow::new`); device registers are not tied to the
// thread that mapped them, so moving that exclusive access to another thread
// is as sound as moving a `Box`.
unsafe impl Send for MmioWindow {}

impl MmioWindow {
    /// Wraps the virtio-mmio window of `size` bytes at `base`.
    ///
    /// # Safety
    ///
    /// The caller promises that:
    /// - `base` is the driver-visible address of a memory-mapped virtio-mmio
    ///   register window of at least `size` bytes, mapped as device memory
    ///   (uncached, no speculative access) for as long as the `MmioWindow`
    ///   lives;
    /// - `base` is 4-byte aligned;
    /// - nothing else reads or writes that window while the `MmioWindow`
    ///   lives (it has exclusive access).
    pub unsafe fn new(base: NonNull<u8>, size: usize) -> Self {
        Self { base, size }
    }

    /// The window's size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Returns the pointer to `width` bytes at byte `offset` when that
    /// access is inside the window and aligned to `width`.
    fn ptr(&self, offset: u64, width: usize) -> Option<NonNull<u8>> {
        let off = usize::try_from(offset).ok()?;
        let end = off.checked_add(width)?;
        if end > self.size || off % width != 0 {
            log::warn!("MmioWindow: dropped {width}-byte access at {offset:#x}");
            return None;
        }
        // SAFETY: `off + width <= size`, so the result stays inside the
        // window the constructor's caller vouched for.
        Some(unsafe { self.base.add(off) })
    }

    fn config_offset(offset: u64) -> Option<u64> {
        offset.checked_add(mmio::CONFIG)
    }

    fn control_offset(offset: u64) -> Option<u64> {
        (offset < mmio::CONFIG).then_some(offset)
    }
}

macro_rules! volatile_rw {
    ($read:ident, $write:ident, $ty:ty, $map:ident) => {
        fn $read(&mut self, offset: u64) -> $ty {
            match Self::$map(offset).and_then(|o| self.ptr(o, core::mem::size_of::<$ty>())) {
                // SAFETY:
                // - validity: `ptr` checked the access lies inside the window
                //   that `new`'s caller promised is mapped device memory;
                // - alignment: `ptr` checked `offset` is a multiple of the
                //   width and `new`'s caller promised a 4-byte aligned base;
                // - exclusivity: `new`'s caller promised no other access.
                Some(p) => <$ty>::from_le(unsafe { p.cast::<$ty>().as_ptr().read_volatile() }),
                None => 0,
            }
        }
        fn $write(&mut self, offset: u64, value: $ty) {
            if let Some(p) =
                Self::$map(offset).and_then(|o| self.ptr(o, core::mem::size_of::<$ty>()))
            {
                // SAFETY: as for the read above: inside the window,
                // aligned to the width, exclusive.
                unsafe { p.cast::<$ty>().as_ptr().write_volatile(value.to_le()) }
            }
        }
    };
}

impl RegisterIo for MmioWindow {
    volatile_rw!(read_reg, write_reg, u32, control_offset);
    volatile_rw!(read_config_u8, write_config_u8, u8, config_offset);
    volatile_rw!(read_config_u16, write_config_u16, u16, config_offset);
    volatile_rw!(read_config_u32, write_config_u32, u32, config_offset);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_reads_and_writes_little_endian_and_drops_bad_accesses() {
        let mut backing = [0u32; 0x200 / 4];
        backing[0] = mmio::MAGIC_VALUE.to_le();
        let base = NonNull::new(backing.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `backing` is a 0x200-byte, 4-aligned array we own for the
        // whole test and touch only through the window.
        let mut w = unsafe { MmioWindow::new(base, 0x200) };
        assert_eq!(w.read_reg(mmio::MAGIC), mmio::MAGIC_VALUE);
        w.write_reg(mmio::STATUS, 0x0102_0304);
        w.write_config_u16(2, 0xbeef);
        w.write_config_u8(1, 0x7f);
        assert_eq!(w.read_config_u8(3), 0xbe);
        assert_eq!(w.read_config_u16(2), 0xbeef);
        assert_eq!(w.read_config_u32(0), 0xbeef_7f00);
        // Misaligned, past the end, and config offsets given to read_reg.
        assert_eq!(w.read_config_u16(1), 0);
        assert_eq!(w.read_config_u32(0x100), 0);
        assert_eq!(w.read_reg(0x100), 0);
        w.write_config_u32(u64::MAX, 1);
        assert_eq!(w.size(), 0x200);
        let status = backing[usize::try_from(mmio::STATUS / 4).unwrap()];
        assert_eq!(u32::from_le(status), 0x0102_0304);
    }
}
