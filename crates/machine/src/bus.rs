//! The physical address space: RAM (fast path) and device windows (slow path).
//!
//! RAM is a [`GuestMemoryMmap`] shared with devices (virtio DMA goes through the
//! `GuestMemory` traits); the hart reads and writes it through a host pointer. Every other
//! address is routed to the device window that contains the whole access, with the access's
//! width, at an offset relative to the window's start. Windows are half-open and never
//! overlap (checked when added); an access that no window contains fails, and the hart turns
//! that into an access-fault exception (Privileged spec §3.7 "Physical Memory Attributes",
//! §4.1.9 scause codes 1, 5, 7).

use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::layout::{PLIC_BASE, PLIC_SIZE, RAM_BASE, UART_BASE, UART_SIZE};
use crate::plic::Plic;
use crate::uart::Uart;
use crate::Error;

/// A device window on the machine's bus.
///
/// The bus calls it with offsets relative to the window's base and the width the guest
/// instruction used: `data.len()` is 1, 2, 4 or 8 bytes, little-endian, and
/// `offset + data.len() <= len` of the window. Implementations must fill all of `data` on
/// reads (zero for unknown registers) and must not panic on any offset or value: the guest
/// chooses both.
pub trait MmioDevice: Send {
    /// A guest load of `data.len()` bytes at `offset` bytes into the window.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest store of `data` at `offset` bytes into the window.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// What answers a window.
enum Target {
    Plic,
    Uart,
    Device(Box<dyn MmioDevice>),
}

struct Window {
    base: u64,
    /// Exclusive end.
    end: u64,
    target: Target,
}

/// The window of `windows` (sorted) containing all of `[pa, pa + size)`, `size >= 1`.
fn find(windows: &mut [Window], pa: u64, size: u64) -> Option<&mut Window> {
    let idx = windows.partition_point(|w| w.base <= pa).checked_sub(1)?;
    let w = windows.get_mut(idx)?;
    let last = pa.checked_add(size.checked_sub(1)?)?;
    (last < w.end).then_some(w)
}

/// Guest RAM as the hart sees it: one contiguous host mapping.
pub(crate) struct Ram {
    ptr: *mut u8,
    len: u64,
    /// Keeps the mapping behind `ptr` alive (the regions are reference-counted).
    mem: GuestMemoryMmap,
}

// SAFETY: `Ram` owns a clone of the `GuestMemoryMmap` (itself `Send`) whose mapping `ptr`
// points into; the pointer is only dereferenced through the atomic accessors below, which
// are sound from any thread. Moving `Ram` to another thread moves that ownership with it.
unsafe impl Send for Ram {}

impl Ram {
    /// Allocates `size` bytes of zeroed RAM at [`RAM_BASE`].
    pub(crate) fn new(size: u64) -> Result<Self, Error> {
        let len = usize::try_from(size).map_err(|_| Error::RamSize(size))?;
        if size == 0 || !size.is_multiple_of(4096) || size > crate::layout::MAX_RAM_SIZE {
            return Err(Error::RamSize(size));
        }
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(RAM_BASE), len)])
            .map_err(Error::Memory)?;
        let ptr = mem
            .get_host_address(GuestAddress(RAM_BASE))
            .map_err(|_| Error::RamSize(size))?;
        Ok(Self {
            ptr,
            len: size,
            mem,
        })
    }

    pub(crate) fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Size in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Bytes of RAM resident in host memory now (`mincore(2)` over the mapping): the
    /// pages the guest (or a loader, or a device) touched and the host has not dropped.
    pub(crate) fn resident_bytes(&self) -> std::io::Result<u64> {
        const PAGE: u64 = 4096;
        let len = usize::try_from(self.len).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let mut vec = vec![0u8; len.div_ceil(PAGE as usize)];
        // SAFETY: `ptr` is the page-aligned start of the live `len`-byte RAM mapping (kept
        // alive by `self.mem`); `vec` has one byte per page of it, as mincore(2) writes.
        let rc = unsafe { libc::mincore(self.ptr.cast(), len, vec.as_mut_ptr()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * PAGE)
    }

    /// The RAM offset of `[pa, pa + size)` if all of it is RAM.
    #[inline(always)]
    pub(crate) fn offset(&self, pa: u64, size: u64) -> Option<usize> {
        let off = pa.wrapping_sub(RAM_BASE);
        if off < self.len && size <= self.len - off {
            // `off < len`, and `len` fits `usize` (checked in `new`).
            Some(off as usize)
        } else {
            None
        }
    }

    /// Loads `N` (1, 2, 4 or 8) bytes at RAM offset `off`, zero-extended.
    ///
    /// # Safety
    ///
    /// `off + N <= len` (as [`Ram::offset`]`(pa, N)` returning `off`
    /// proves) and `off % N == 0`. Unchecked in release builds: this is
    /// the hart's hot path.
    #[inline(always)]
    pub(crate) unsafe fn load<const N: usize>(&self, off: usize) -> u64 {
        const { assert!(N == 1 || N == 2 || N == 4 || N == 8) };
        debug_assert!(off.is_multiple_of(N) && (off + N) as u64 <= self.len);
        // SAFETY:
        // - validity: `off + N <= len` (caller, from `offset`), so `ptr + off .. + N` lies in
        //   the mapping, which `self.mem` keeps alive as long as `self`;
        // - alignment: the mapping is page aligned and `off % N == 0` (caller);
        // - races: all hart accesses are atomic; device DMA goes through vm-memory, which
        //   accesses guest memory with volatile copies: the memory is shared by design, as in
        //   every VMM, and the guest orders its own accesses with fences.
        unsafe {
            let p = self.ptr.add(off);
            match N {
                1 => u64::from(AtomicU8::from_ptr(p).load(Ordering::Relaxed)),
                2 => u64::from(AtomicU16::from_ptr(p.cast()).load(Ordering::Relaxed)),
                4 => u64::from(AtomicU32::from_ptr(p.cast()).load(Ordering::Relaxed)),
                _ => AtomicU64::from_ptr(p.cast()).load(Ordering::Relaxed),
            }
        }
    }

    /// Stores the low `N` (1, 2, 4 or 8) bytes of `v` at RAM offset `off`.
    ///
    /// # Safety
    ///
    /// As [`Ram::load`]: `off + N <= len` and `off % N == 0`.
    #[inline(always)]
    pub(crate) unsafe fn store<const N: usize>(&self, off: usize, v: u64) {
        const { assert!(N == 1 || N == 2 || N == 4 || N == 8) };
        debug_assert!(off.is_multiple_of(N) && (off + N) as u64 <= self.len);
        // SAFETY: as in `load`: in bounds and aligned by the caller's guarantee, the mapping
        // is alive while `self` is, and every hart access is atomic.
        unsafe {
            let p = self.ptr.add(off);
            match N {
                1 => AtomicU8::from_ptr(p).store(v as u8, Ordering::Relaxed),
                2 => AtomicU16::from_ptr(p.cast()).store(v as u16, Ordering::Relaxed),
                4 => AtomicU32::from_ptr(p.cast()).store(v as u32, Ordering::Relaxed),
                _ => AtomicU64::from_ptr(p.cast()).store(v, Ordering::Relaxed),
            }
        }
    }

    /// Atomically replaces the 8 bytes at `off` if they still hold `old` (for PTE A/D
    /// updates).
    ///
    /// # Safety
    ///
    /// As [`Ram::load`] with `N` = 8: `off + 8 <= len` and `off % 8 == 0`.
    pub(crate) unsafe fn compare_exchange_u64(&self, off: usize, old: u64, new: u64) -> bool {
        debug_assert!(off.is_multiple_of(8) && (off + 8) as u64 <= self.len);
        // SAFETY: as in `load`.
        unsafe {
            AtomicU64::from_ptr(self.ptr.add(off).cast())
                .compare_exchange(old, new, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        }
    }
}

/// The bus: RAM, the built-in PLIC and UART, and added device windows.
pub(crate) struct Bus {
    pub(crate) ram: Ram,
    pub(crate) plic: Plic,
    pub(crate) uart: Uart,
    /// Sorted by base, non-overlapping.
    windows: Vec<Window>,
}

impl Bus {
    pub(crate) fn new(ram: Ram, plic: Plic, uart: Uart) -> Self {
        let mut bus = Self {
            ram,
            plic,
            uart,
            windows: Vec::new(),
        };
        // The built-in windows cannot overlap each other or RAM.
        let builtins = [
            (PLIC_BASE, PLIC_SIZE, Target::Plic),
            (UART_BASE, UART_SIZE, Target::Uart),
        ];
        for (base, len, target) in builtins {
            if let Err(e) = bus.insert(base, len, target) {
                unreachable!("built-in windows are disjoint: {e}");
            }
        }
        bus
    }

    /// Adds a device window `[base, base + len)`.
    ///
    /// # Errors
    /// [`Error::InvalidWindow`] for an empty or wrapping window, [`Error::Overlap`] when it
    /// intersects RAM or another window.
    pub(crate) fn add(
        &mut self,
        base: u64,
        len: u64,
        dev: Box<dyn MmioDevice>,
    ) -> Result<(), Error> {
        self.insert(base, len, Target::Device(dev))
    }

    /// Whether `[base, base + len)` could be added: non-empty, not wrapping, clear of RAM and
    /// of every window.
    pub(crate) fn is_free(&self, base: u64, len: u64) -> bool {
        let Some(end) = base.checked_add(len).filter(|_| len > 0) else {
            return false;
        };
        let overlaps = |b: u64, e: u64| base < e && b < end;
        !overlaps(RAM_BASE, RAM_BASE + self.ram.len())
            && !self.windows.iter().any(|w| overlaps(w.base, w.end))
    }

    fn insert(&mut self, base: u64, len: u64, target: Target) -> Result<(), Error> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(Error::InvalidWindow { base, len })?;
        let ram_end = RAM_BASE + self.ram.len();
        let overlaps = |b: u64, e: u64| base < e && b < end;
        if overlaps(RAM_BASE, ram_end) {
            return Err(Error::Overlap {
                base,
                len,
                other_base: RAM_BASE,
                other_len: self.ram.len(),
            });
        }
        if let Some(w) = self.windows.iter().find(|w| overlaps(w.base, w.end)) {
            return Err(Error::Overlap {
                base,
                len,
                other_base: w.base,
                other_len: w.end - w.base,
            });
        }
        let at = self.windows.partition_point(|w| w.base < base);
        self.windows.insert(at, Window { base, end, target });
        Ok(())
    }

    /// A device load of `size` (1, 2, 4, 8) bytes at physical `pa`; `None` when no window
    /// holds it (an access fault for the guest).
    pub(crate) fn mmio_read(&mut self, pa: u64, size: usize) -> Option<u64> {
        let mut buf = [0u8; 8];
        let data = buf.get_mut(..size)?;
        let w = find(&mut self.windows, pa, size as u64)?;
        let off = pa - w.base;
        match &mut w.target {
            Target::Plic => self.plic.read(off, data),
            Target::Uart => self.uart.read(off, data),
            Target::Device(dev) => dev.read(off, data),
        }
        Some(u64::from_le_bytes(buf))
    }

    /// A device store of the low `size` bytes of `v` at physical `pa`; `false` when no window
    /// holds it (an access fault for the guest).
    pub(crate) fn mmio_write(&mut self, pa: u64, size: usize, v: u64) -> bool {
        let bytes = v.to_le_bytes();
        let Some(data) = bytes.get(..size) else {
            return false;
        };
        let Some(w) = find(&mut self.windows, pa, size as u64) else {
            return false;
        };
        let off = pa - w.base;
        match &mut w.target {
            Target::Plic => self.plic.write(off, data),
            Target::Uart => self.uart.write(off, data),
            Target::Device(dev) => dev.write(off, data),
        }
        true
    }

    /// Loads `size` bytes at physical `pa` from RAM or a device.
    pub(crate) fn read_phys(&mut self, pa: u64, size: usize) -> Option<u64> {
        if let Some(off) = self.ram.offset(pa, size as u64) {
            if off % size == 0 {
                // SAFETY: `offset(pa, size)` proved `off + size <= len`, and
                // `off % size == 0`; each arm loads exactly `size` bytes.
                let v = unsafe {
                    match size {
                        1 => Some(self.ram.load::<1>(off)),
                        2 => Some(self.ram.load::<2>(off)),
                        4 => Some(self.ram.load::<4>(off)),
                        8 => Some(self.ram.load::<8>(off)),
                        _ => None,
                    }
                };
                if v.is_some() {
                    return v;
                }
            }
        }
        self.mmio_read(pa, size)
    }

    /// Stores `size` bytes at physical `pa` to RAM or a device.
    pub(crate) fn write_phys(&mut self, pa: u64, size: usize, v: u64) -> bool {
        if let Some(off) = self.ram.offset(pa, size as u64) {
            if off % size == 0 {
                // SAFETY: as in `read_phys`: in bounds and aligned for
                // exactly the `size` bytes each arm stores.
                let done = unsafe {
                    match size {
                        1 => self.ram.store::<1>(off, v),
                        2 => self.ram.store::<2>(off, v),
                        4 => self.ram.store::<4>(off, v),
                        8 => self.ram.store::<8>(off, v),
                        _ => return self.mmio_write(pa, size, v),
                    }
                    true
                };
                return done;
            }
        }
        self.mmio_write(pa, size, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plic::{IrqLine, IrqShared};
    use std::sync::{Arc, Mutex};

    /// (is_write, offset, bytes)
    type Log = Arc<Mutex<Vec<(bool, u64, Vec<u8>)>>>;
    struct Recorder(Log);
    impl MmioDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(0xab);
            self.0.lock().unwrap().push((false, offset, data.to_vec()));
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.lock().unwrap().push((true, offset, data.to_vec()));
        }
    }

    fn bus() -> Bus {
        let shared = Arc::new(IrqShared::default());
        let uart = Uart::new(Box::new(std::io::sink()), IrqLine::new(shared.clone(), 10));
        Bus::new(Ram::new(1 << 20).unwrap(), Plic::new(shared), uart)
    }

    #[test]
    fn overlapping_windows_are_rejected() {
        let mut b = bus();
        let log = Arc::new(Mutex::new(Vec::new()));
        b.add(0x1000_1000, 0x1000, Box::new(Recorder(log.clone())))
            .unwrap();
        for (base, len) in [
            (0x1000_1000, 0x1000),
            (0x1000_0fff, 2),
            (0x1000_1fff, 1),
            (0x1000_0000, 1),
            (PLIC_BASE + PLIC_SIZE - 1, 0x10),
            (RAM_BASE - 1, 2),
            (RAM_BASE + (1 << 20) - 1, 1),
        ] {
            assert!(
                matches!(
                    b.add(base, len, Box::new(Recorder(log.clone()))),
                    Err(Error::Overlap { .. })
                ),
                "{base:#x}+{len:#x}"
            );
        }
        assert!(matches!(
            b.add(5, 0, Box::new(Recorder(log.clone()))),
            Err(Error::InvalidWindow { .. })
        ));
        assert!(matches!(
            b.add(u64::MAX, 2, Box::new(Recorder(log.clone()))),
            Err(Error::InvalidWindow { .. })
        ));
        // Adjacent windows on both sides are fine (half-open ranges).
        b.add(0x1000_2000, 0x1000, Box::new(Recorder(log.clone())))
            .unwrap();
        b.add(0x1000_0100, 0xf00, Box::new(Recorder(log))).unwrap();
        b.add(
            RAM_BASE + (1 << 20),
            0x1000,
            Box::new(Recorder(Arc::default())),
        )
        .unwrap();
    }

    #[test]
    fn last_byte_is_routed_and_one_past_is_not() {
        let mut b = bus();
        let log = Arc::new(Mutex::new(Vec::new()));
        b.add(0x1000_1000, 0x1000, Box::new(Recorder(log.clone())))
            .unwrap();
        assert_eq!(b.mmio_read(0x1000_1fff, 1), Some(0xab));
        assert_eq!(b.mmio_read(0x1000_1ff8, 8), Some(0xabab_abab_abab_abab));
        assert_eq!(b.mmio_read(0x1000_1ffc, 8), None, "straddles the end");
        assert_eq!(b.mmio_read(0x1000_2000, 1), None);
        assert_eq!(b.mmio_read(0x1000_0fff, 1), None);
        assert!(b.mmio_write(0x1000_1004, 4, 0x1122_3344));
        assert!(!b.mmio_write(0x1000_2000, 4, 0));
        let log = log.lock().unwrap();
        assert_eq!(log[0], (false, 0xfff, vec![0xab]));
        assert_eq!(log[2], (true, 4, vec![0x44, 0x33, 0x22, 0x11]));
        // RAM's last byte, then one past.
        assert!(b.write_phys(RAM_BASE + (1 << 20) - 1, 1, 0x5a));
        assert_eq!(b.read_phys(RAM_BASE + (1 << 20) - 1, 1), Some(0x5a));
        assert_eq!(b.read_phys(RAM_BASE + (1 << 20), 1), None);
        assert_eq!(b.read_phys(RAM_BASE + (1 << 20) - 4, 8), None);
    }
}
