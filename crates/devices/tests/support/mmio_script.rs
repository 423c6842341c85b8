//! A hostile driver as a byte script: arbitrary bytes become a device choice,
//! guest memory contents and a sequence of register accesses against an
//! `MmioTransport` (either version) with a real vmmio-devices device behind
//! it. Shared by the `mmio_transport` cargo-fuzz target (`fuzz/`) and the
//! bounded property test `tests/hostile_transport.rs`: [`run`] must never
//! panic and always return.
//!
//! Layout: byte 0 picks the window and device (bit 0: Legacy; bits 1-2:
//! 0 Block, 1 read-only Block with two queues, 2 Rng, 3 Console; bit 3:
//! small `QueueSizeMax` of 8; bit 4: two guest-memory regions; bit 5: a
//! Net device over a `-netdev stream` socket pair instead; bit 6: a Vsock
//! device, guest CID 3, on a socket in a fresh temporary directory with a
//! host program listening on port 0, the port zeroed memory names; bit 7:
//! VIRTIO_F_RING_PACKED offered on Modern windows), bytes 1-2
//! (LE) how many of the following bytes fill guest memory (64 KiB at 0,
//! the rest zero). Then 12-byte operations: `[kind, a0, a1, v0..v7, x]`,
//! `a` = LE u16, `v` = LE u64. `kind % 8`:
//! - 0..=2: one raw access at offset `a & 0x1fff` (beyond the window too),
//!   width `1 << (x & 3)`, a write if `x & 4`, the low bytes of `v`;
//! - 3: the handshake up to FEATURES_OK with driver features `v`
//!   (Legacy: GuestPageSize `1 << (x % 17)` and no FEATURES_OK);
//! - 4: queue `a % 4` set up: size `v[6..8]`; Modern: descriptor, driver
//!   and device areas at `v[0..2]`, `v[2..4]`, `v[4..6]` and ready;
//!   Legacy: QueueAlign `1 << (x % 17)` and QueuePFN `v[0..4]`;
//! - 5: `Status` |= DRIVER_OK (read-modify-write, as a driver does);
//! - 6: notify queue `a` (Modern with `x & 1`: `v` as notification data);
//! - 7: `x & 1`: host pushes `v` as console input (Net: a frame of
//!   `v[0] % 200` bytes of `v` on the socket, then the backends are
//!   polled; Vsock: a host program connects, writes `CONNECT <v[0]>\n`
//!   and `v`, then the backends are polled); else 8 bytes `v` poked
//!   into guest memory at `a` (rings change between notifies);
//!   also acknowledges `InterruptStatus`.
//!
//! After each operation an oracle checks what the device did (a failed
//! check panics, like a crash): `InterruptStatus` holds only the two
//! defined bits, none before DRIVER_OK and no used-buffer bit before the
//! device was activated (§4.2.2.1, §2.1.2); and every byte of guest memory
//! the device wrote (logged in order by a
//! [`vmmio_device::recording::RecordingMemory`]) lies in a used ring or in
//! a buffer that a descriptor of a queue's table (direct or indirect)
//! marks device-writable (§2.7.5: never the descriptor tables, the
//! available rings or a device-readable buffer).

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};
use vmmio_device::recording::{recording_memory, Log, RecordingMemory, Write};
use vmmio_device::{
    Interrupt, InterruptCause, MmioTransport, Queue, TransportVersion, VirtioDevice,
};
use vmmio_devices::net::{Net, Stream};
use vmmio_devices::rng::EntropySource;
use vmmio_devices::vsock::{Vsock, VsockOptions};
use vmmio_devices::{Block, BlockOptions, Console, MemoryBackend, Rng};
use vmmio_spec::mmio;
use vmmio_spec::status::{ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK};

type Mem = RecordingMemory;

/// Guest memory size in bytes.
const MEM: usize = 0x1_0000;
/// Disk size of the block devices in bytes (128 sectors).
const DISK: usize = 0x1_0000;
/// Bytes of one operation.
pub const OP: usize = 12;
/// Most operations run from one input (bounds the run time).
const MAX_OPS: usize = 4096;

struct Line;

impl Interrupt for Line {
    fn trigger(&self, _cause: InterruptCause) {}
}

/// Deterministic entropy (a counter), so that runs reproduce.
struct Counter(u8);

impl EntropySource for Counter {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), getrandom::Error> {
        for b in buf {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
        Ok(())
    }
}

/// Runs one script; see the module documentation for its layout.
pub fn run(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let (mem_len, rest) = match rest {
        [lo, hi, rest @ ..] => (usize::from(u16::from_le_bytes([*lo, *hi])), rest),
        _ => (0, rest),
    };
    let (contents, ops) = rest.split_at(mem_len.min(rest.len()));

    let (mem, log) = if head & 0x10 != 0 {
        recording_memory(&[
            (GuestAddress(0), 0x7ff0),
            (GuestAddress(0x7ff0), MEM - 0x7ff0),
        ])
    } else {
        recording_memory(&[(GuestAddress(0), MEM)])
    }
    .expect("script memory");
    mem.write_slice(contents, GuestAddress(0))
        .expect("contents fit in memory");

    let version = if head & 1 != 0 {
        TransportVersion::Legacy
    } else {
        TransportVersion::Modern
    };
    let qmax = if head & 0x08 != 0 { 8 } else { 256 };
    let mut console_input = None;
    let mut net_peer = None;
    let mut vsock_dir = None;
    let device: Box<dyn VirtioDevice<Mem> + Send> = match (head >> 1) & 3 {
        _ if head & 0x40 != 0 => {
            let dir = VsockDir::new();
            let dev = Vsock::with_options(
                3,
                dir.sock(),
                VsockOptions {
                    queue_size: qmax,
                    max_connections: 8,
                    ..VsockOptions::default()
                },
            )
            .expect("vsock device");
            vsock_dir = Some(dir);
            Box::new(dev)
        }
        _ if head & 0x20 != 0 => {
            let (a, b) = std::os::unix::net::UnixStream::pair().expect("socket pair");
            b.set_nonblocking(true).expect("non-blocking peer");
            net_peer = Some(b);
            Box::new(Net::new(Box::new(Stream::new(a).expect("stream"))).with_queue_size(qmax))
        }
        0 | 1 => {
            let two = (head >> 1) & 3 == 1;
            let options = BlockOptions {
                read_only: two,
                num_queues: if two { 2 } else { 1 },
                queue_size: qmax,
                discard: true,
                write_zeroes: true,
                id: Some("fuzz".into()),
                ..BlockOptions::default()
            };
            Box::new(Block::with_backend(MemoryBackend::new(DISK), options).expect("valid options"))
        }
        2 => Box::new(Rng::with_source(Box::new(Counter(0))).with_queue_size(qmax)),
        _ => {
            let (console, _output) = Console::capture();
            let console = console.with_queue_size(qmax);
            console_input = Some(console.input_handle());
            Box::new(console)
        }
    };
    let mut window = MmioTransport::new(version, device, mem.clone(), Arc::new(Line));
    window.set_packed_ring(head & 0x80 != 0);
    let legacy = version == TransportVersion::Legacy;

    let w32 = |window: &mut MmioTransport<Mem>, offset: u64, value: u32| {
        window.write(offset, &value.to_le_bytes());
    };
    let r32 = |window: &mut MmioTransport<Mem>, offset: u64| {
        let mut b = [0u8; 4];
        window.read(offset, &mut b);
        u32::from_le_bytes(b)
    };

    for op in ops.chunks_exact(OP).take(MAX_OPS) {
        let queues_before = queues(&window);
        log.clear();
        let kind = op[0];
        let a = u16::from_le_bytes([op[1], op[2]]);
        let mut vb = [0u8; 8];
        vb.copy_from_slice(&op[3..11]);
        let v = u64::from_le_bytes(vb);
        let x = op[11];
        let lo = v as u32;
        let hi = (v >> 32) as u32;
        let half = |i: usize| u32::from(u16::from_le_bytes([vb[i], vb[i + 1]]));
        match kind % 8 {
            0..=2 => {
                let offset = u64::from(a & 0x1fff);
                let width = 1usize << (x & 3);
                if x & 4 != 0 {
                    window.write(offset, &vb[..width]);
                } else {
                    let mut buf = [0u8; 8];
                    window.read(offset, &mut buf[..width]);
                }
            }
            3 => {
                w32(&mut window, mmio::STATUS, 0);
                w32(&mut window, mmio::STATUS, ACKNOWLEDGE);
                w32(&mut window, mmio::STATUS, ACKNOWLEDGE | DRIVER);
                for page in 0..2 {
                    w32(&mut window, mmio::DEVICE_FEATURES_SEL, page);
                    r32(&mut window, mmio::DEVICE_FEATURES);
                }
                w32(&mut window, mmio::DRIVER_FEATURES_SEL, 0);
                w32(&mut window, mmio::DRIVER_FEATURES, lo);
                if legacy {
                    w32(&mut window, mmio::LEGACY_GUEST_PAGE_SIZE, 1 << (x % 17));
                } else {
                    w32(&mut window, mmio::DRIVER_FEATURES_SEL, 1);
                    w32(&mut window, mmio::DRIVER_FEATURES, hi);
                    w32(
                        &mut window,
                        mmio::STATUS,
                        ACKNOWLEDGE | DRIVER | FEATURES_OK,
                    );
                    r32(&mut window, mmio::STATUS);
                }
            }
            4 => {
                w32(&mut window, mmio::QUEUE_SEL, u32::from(a % 4));
                r32(&mut window, mmio::QUEUE_SIZE_MAX);
                w32(&mut window, mmio::QUEUE_SIZE, half(6));
                if legacy {
                    w32(&mut window, mmio::LEGACY_QUEUE_ALIGN, 1 << (x % 17));
                    w32(&mut window, mmio::LEGACY_QUEUE_PFN, lo);
                } else {
                    w32(&mut window, mmio::QUEUE_DESC_LOW, half(0));
                    w32(&mut window, mmio::QUEUE_DESC_HIGH, 0);
                    w32(&mut window, mmio::QUEUE_DRIVER_LOW, half(2));
                    w32(&mut window, mmio::QUEUE_DRIVER_HIGH, 0);
                    w32(&mut window, mmio::QUEUE_DEVICE_LOW, half(4));
                    w32(&mut window, mmio::QUEUE_DEVICE_HIGH, 0);
                    w32(&mut window, mmio::QUEUE_READY, 1);
                }
            }
            5 => {
                let status = r32(&mut window, mmio::STATUS);
                w32(&mut window, mmio::STATUS, status | DRIVER_OK);
            }
            6 => {
                let value = if !legacy && x & 1 != 0 {
                    lo
                } else {
                    u32::from(a)
                };
                w32(&mut window, mmio::QUEUE_NOTIFY, value);
            }
            _ => {
                if x & 1 != 0 {
                    if let Some(input) = &console_input {
                        input.push(&vb);
                    }
                    if let Some(peer) = net_peer.as_mut() {
                        use std::io::Write;
                        let len = usize::from(vb[0] % 200);
                        let mut frame = (len as u32).to_be_bytes().to_vec();
                        frame.extend(vb.iter().cycle().take(len));
                        // A full socket just loses the frame's tail: the
                        // device must cope with broken framing too.
                        let _ = peer.write(&frame);
                        let _ = window.poll_backends(std::time::Duration::ZERO);
                    }
                    if let Some(dir) = vsock_dir.as_mut() {
                        dir.knock(&vb);
                        let _ = window.poll_backends(std::time::Duration::ZERO);
                    }
                } else {
                    // Two regions or one, every byte of 0..MEM is memory;
                    // a poke that runs past the end is cut short.
                    let _ = mem.write(&vb, GuestAddress(u64::from(a)));
                    // The driver's own write, not the device's.
                    log.clear();
                }
                let status = r32(&mut window, mmio::INTERRUPT_STATUS);
                w32(&mut window, mmio::INTERRUPT_ACK, status);
            }
        }
        check_interrupt_status(&window);
        check_device_writes(&log, &mem, &queues_before, &queues(&window));
    }
}

/// The window's queues (the transport's copy of their registers).
fn queues(window: &MmioTransport<Mem>) -> Vec<Queue> {
    (0..8).map_while(|i| window.queue(i)).collect()
}

/// `InterruptStatus` holds only defined bits; nothing before DRIVER_OK,
/// no used-buffer bit before activation.
fn check_interrupt_status(window: &MmioTransport<Mem>) {
    let bits = window.interrupt_status().get();
    let status = window.status();
    assert_eq!(
        bits & !(mmio::INT_VRING | mmio::INT_CONFIG),
        0,
        "undefined InterruptStatus bits {bits:#x}"
    );
    if status & DRIVER_OK == 0 {
        assert_eq!(
            bits, 0,
            "InterruptStatus {bits:#x} before DRIVER_OK (Status {status:#x})"
        );
    }
    if !window.is_activated() {
        assert_eq!(
            bits & mmio::INT_VRING,
            0,
            "used-buffer interrupt from a device that is not running"
        );
    }
}

/// Every write the device made lies in a used ring or a device-writable
/// buffer of one of `before` or `after` (the queues at the start and end
/// of the operation).
fn check_device_writes(log: &Log, mem: &Mem, before: &[Queue], after: &[Queue]) {
    let writes = log.take();
    if writes.is_empty() {
        return;
    }
    let all: Vec<&Queue> = before.iter().chain(after).collect();
    let mut used_rings: Vec<(u64, u64)> = Vec::new();
    for q in &all {
        let (desc, _, used) = q.addresses();
        let size = u64::from(q.size());
        if q.packed() {
            // §2.8: the device writes used descriptors back into the
            // descriptor ring, and its event suppression structure.
            used_rings.push((desc, desc.saturating_add(16 * size)));
            used_rings.push((used, used.saturating_add(4)));
        } else {
            used_rings.push((used, used.saturating_add(6 + 8 * size)));
        }
    }
    let outside: Vec<Write> = writes
        .into_iter()
        .filter(|w| !covered(&used_rings, w))
        .collect();
    if outside.is_empty() {
        return;
    }
    let buffers = writable_buffers(mem, &all);
    for w in outside {
        assert!(
            covered(&buffers, &w),
            "the device wrote {} bytes at {:#x}: not a used ring, not a device-writable buffer",
            w.len,
            w.addr
        );
    }
}

/// Whether `[w.addr, w.addr + w.len)` lies inside one of `ranges`.
fn covered(ranges: &[(u64, u64)], w: &Write) -> bool {
    let end = w.addr.saturating_add(w.len);
    ranges.iter().any(|&(s, e)| s <= w.addr && end <= e)
}

/// `[start, end)` of every buffer a descriptor of a queue's table marks
/// device-writable, directly or in an indirect table it points to.
fn writable_buffers(mem: &Mem, queues: &[&Queue]) -> Vec<(u64, u64)> {
    use vmmio_spec::split::{VIRTQ_DESC_F_INDIRECT as F_INDIRECT, VIRTQ_DESC_F_WRITE as F_WRITE};
    // Split descriptors keep `flags` at byte 12, packed ones at 14 (§2.8.13);
    // indirect tables of a packed ring use the packed layout too.
    let desc = |at: u64, packed: bool| -> Option<(u64, u64, u16)> {
        let raw: [u8; 16] = mem.read_obj(GuestAddress(at)).ok()?;
        let addr = u64::from_le_bytes(raw[0..8].try_into().ok()?);
        let len = u64::from(u32::from_le_bytes(raw[8..12].try_into().ok()?));
        let f = if packed { 14 } else { 12 };
        let flags = u16::from_le_bytes([raw[f], raw[f + 1]]);
        Some((addr, len, flags))
    };
    let mut out = Vec::new();
    for q in queues {
        let packed = q.packed();
        let desc = |at: u64| desc(at, packed);
        let table = q.addresses().0;
        for i in 0..u64::from(q.size()) {
            let Some((addr, len, flags)) = desc(table.wrapping_add(16 * i)) else {
                continue;
            };
            if flags & F_WRITE != 0 {
                out.push((addr, addr.saturating_add(len)));
            }
            if flags & F_INDIRECT != 0 {
                // The memory is 64 KiB: no table holds more entries.
                for k in 0..(len / 16).min((MEM / 16) as u64) {
                    if let Some((a, l, f)) = desc(addr.wrapping_add(16 * k)) {
                        if f & F_WRITE != 0 {
                            out.push((a, a.saturating_add(l)));
                        }
                    }
                }
            }
        }
    }
    out
}

/// The vsock device's host side for one script: a temporary directory with
/// the device's socket, a host program listening on port 0 and the host
/// programs that connected (at most 16 kept).
struct VsockDir {
    dir: std::path::PathBuf,
    _port0: std::os::unix::net::UnixListener,
    clients: Vec<std::os::unix::net::UnixStream>,
}

impl VsockDir {
    fn new() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vmmio-script-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let port0 = std::os::unix::net::UnixListener::bind(dir.join("v.sock_0"))
            .expect("host program on port 0");
        Self {
            dir,
            _port0: port0,
            clients: Vec::new(),
        }
    }

    fn sock(&self) -> std::path::PathBuf {
        self.dir.join("v.sock")
    }

    /// A host program connects and writes `CONNECT <v[0]>\n` and `v`.
    fn knock(&mut self, v: &[u8; 8]) {
        use std::io::Write;
        if self.clients.len() >= 16 {
            self.clients.remove(0);
        }
        if let Ok(mut s) = std::os::unix::net::UnixStream::connect(self.sock()) {
            let _ = s.set_nonblocking(true);
            let _ = writeln!(s, "CONNECT {}", v[0]);
            let _ = s.write(v);
            self.clients.push(s);
        }
    }
}

impl Drop for VsockDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
