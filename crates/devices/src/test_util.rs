//! Test helpers: guest memory, a tiny driver-side split-ring writer and a
//! counting interrupt line.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmmio_device::queue::Descriptor;
use vmmio_device::{Interrupt, InterruptCause, InterruptStatus, Queue, VirtioDevice};

/// Guest memory used by the tests: 1 MiB at guest address 0.
pub type Mem = GuestMemoryMmap<()>;

/// Size of [`mem`] in bytes.
pub const MEM_SIZE: usize = 1 << 20;

/// Where [`TestRing`] data buffers start.
pub const DATA_BASE: u64 = 0x1_0000;

pub use vmmio_spec::split::{VIRTQ_DESC_F_NEXT as F_NEXT, VIRTQ_DESC_F_WRITE as F_WRITE};

/// 1 MiB of zeroed guest memory at address 0.
pub fn mem() -> Mem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("1 MiB of test memory")
}

/// A descriptor for chains built by hand.
pub fn desc(addr: u64, len: u32, writable: bool) -> Descriptor {
    Descriptor {
        addr: GuestAddress(addr),
        len,
        writable,
    }
}

/// An interrupt line that counts its triggers.
#[derive(Debug, Default)]
pub struct CountingLine {
    used: AtomicU32,
    config: AtomicU32,
}

impl CountingLine {
    /// Used-buffer interrupts so far.
    pub fn used(&self) -> u32 {
        self.used.load(Ordering::SeqCst)
    }
    /// Configuration-change interrupts so far.
    pub fn config(&self) -> u32 {
        self.config.load(Ordering::SeqCst)
    }
}

impl Interrupt for CountingLine {
    fn trigger(&self, cause: InterruptCause) {
        match cause {
            InterruptCause::UsedBuffer => self.used.fetch_add(1, Ordering::SeqCst),
            InterruptCause::ConfigChange => self.config.fetch_add(1, Ordering::SeqCst),
        };
    }
}

/// An `InterruptStatus` in front of a fresh [`CountingLine`].
pub fn interrupt() -> (InterruptStatus, Arc<CountingLine>) {
    let line = Arc::new(CountingLine::default());
    (InterruptStatus::new(line.clone()), line)
}

/// The driver side of one split virtqueue in [`mem`]: descriptor table,
/// available ring and used ring at fixed addresses chosen by `slot`, plus a
/// bump allocator for data buffers.
pub struct TestRing {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
    next_buf: u64,
}

impl TestRing {
    /// A ring of `size` entries (power of two <= 256); `slot` (0..4) picks
    /// its place in memory so several queues can coexist.
    pub fn new(size: u16, slot: u64) -> Self {
        let base = 0x1000 + slot * 0x3000;
        Self {
            size,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
            next_buf: DATA_BASE + slot * 0x3_0000,
        }
    }

    /// A device-role queue over this ring, ready, with `features`.
    pub fn queue(&self, features: u64) -> Queue {
        let mut q = Queue::new(self.size);
        q.set_size(self.size);
        q.set_addresses(self.desc, self.avail, self.used);
        q.set_features(features);
        q.set_ready(true);
        q
    }

    /// Reserves `len` bytes of guest memory for a buffer (16-byte aligned).
    pub fn alloc(&mut self, len: u64) -> u64 {
        let at = self.next_buf;
        self.next_buf += (len + 15) & !15;
        assert!(self.next_buf <= MEM_SIZE as u64, "test memory exhausted");
        at
    }

    /// Writes descriptor `i` of the table.
    pub fn write_desc(&self, mem: &Mem, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(self.desc + 16 * u64::from(i));
        mem.write_obj(addr, at).unwrap();
        mem.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
        mem.write_obj(next, GuestAddress(at.0 + 14)).unwrap();
    }

    /// Makes chain `head` available.
    pub fn publish(&mut self, mem: &Mem, head: u16) {
        let slot = self.avail_idx % self.size;
        mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * u64::from(slot)))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Writes `descs` as a chain into free table entries and makes it
    /// available; returns the head index.
    pub fn add_chain(&mut self, mem: &Mem, descs: &[Descriptor]) -> u16 {
        let n = u16::try_from(descs.len()).unwrap();
        assert!(n >= 1);
        let head = self.next_desc;
        for (k, d) in descs.iter().enumerate() {
            let i = (head + k as u16) % self.size;
            let last = k + 1 == descs.len();
            let flags = if d.writable { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            self.write_desc(mem, i, d.addr.0, d.len, flags, (i + 1) % self.size);
        }
        self.next_desc = (head + n) % self.size;
        self.publish(mem, head);
        head
    }

    /// Used elements added since the previous call, as `(id, len)`.
    pub fn take_used(&mut self, mem: &Mem) -> Vec<(u32, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = u64::from(self.used_seen % self.size);
            let id: u32 = mem
                .read_obj(GuestAddress(self.used + 4 + 8 * slot))
                .unwrap();
            let len: u32 = mem
                .read_obj(GuestAddress(self.used + 8 + 8 * slot))
                .unwrap();
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// Sets the available ring's `flags` (bit 0: no interrupt).
    pub fn set_avail_flags(&self, mem: &Mem, flags: u16) {
        mem.write_obj(flags, GuestAddress(self.avail)).unwrap();
    }
}

/// A driver adding chains while the device serves them (a vCPU beside a
/// worker thread): each call makes table entry `idx % size` available,
/// starting at `idx == start`, `extra` times in all. The table must
/// already hold a chain at every entry.
pub fn refiller(mem: Mem, ring: &TestRing, start: u16, extra: u16) -> impl FnMut() + Send {
    let (avail, size) = (ring.avail, ring.size);
    let mut idx = start;
    move || {
        if idx >= start + extra {
            return;
        }
        let slot = u64::from(idx % size);
        mem.write_obj(idx % size, GuestAddress(avail + 4 + 2 * slot))
            .unwrap();
        idx += 1;
        mem.write_obj(idx, GuestAddress(avail + 2)).unwrap();
    }
}

/// The `avail_event` the device published in `ring`'s used ring (EVENT_IDX).
pub fn avail_event(mem: &Mem, ring: &TestRing) -> u16 {
    mem.read_obj(GuestAddress(ring.used + 4 + 8 * u64::from(ring.size)))
        .unwrap()
}

/// What a synchronous embedder's `MmioTransport::poll_backends` does, with
/// a zero timeout: delivers `backend_event` for every listed fd that is
/// ready, until none is (at most `rounds` times). Returns the events
/// delivered.
pub fn run_backends<D: VirtioDevice<Mem> + ?Sized>(dev: &mut D, rounds: usize) -> usize {
    (0..rounds)
        .map_while(|_| Some(wait_backends(dev, 0)).filter(|&n| n > 0))
        .sum()
}

/// One round of a poll loop: waits up to `timeout_ms` for a listed fd to
/// be ready and delivers `backend_event` for each ready one. Returns the
/// events delivered (0: nothing was ready in time).
pub fn wait_backends<D: VirtioDevice<Mem> + ?Sized>(dev: &mut D, timeout_ms: i32) -> usize {
    let fds = dev.backend_fds();
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|b| libc::pollfd {
            fd: b.fd,
            events: (if b.readable { libc::POLLIN } else { 0 })
                | (if b.writable { libc::POLLOUT } else { 0 }),
            revents: 0,
        })
        .collect();
    // SAFETY: `pollfds` is a live, writable array of its length.
    let rc = unsafe {
        libc::poll(
            pollfds.as_mut_ptr(),
            pollfds.len() as libc::nfds_t,
            timeout_ms,
        )
    };
    assert!(rc >= 0, "poll: {}", std::io::Error::last_os_error());
    let mut events = 0;
    for (b, p) in fds.iter().zip(&pollfds) {
        if p.revents != 0 {
            events += 1;
            dev.backend_event(b.token);
        }
    }
    events
}
