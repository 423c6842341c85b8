//! Minimal in-memory devices for the loopback tests: a block device over a
//! `Vec<u8>`, an entropy device that writes a counter, and a one-port
//! console with an input buffer and an output log. They serve requests
//! synchronously inside `queue_notify`, so a driver's kick completes the
//! request before the `QueueNotify` store returns.
//!
//! State the tests inspect is behind an `Arc<Mutex<..>>` handle, because the
//! device itself is owned by the device-side transport.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestMemory};
use vmmio_device::queue::Descriptor;
use vmmio_device::{
    ActivateError, DescriptorChain, InterruptCause, InterruptStatus, Queue, VirtioDevice,
};
use vmmio_spec::device_id;
use vmmio_spec::notification::NotificationData;

use crate::Mem;

/// Queue size every test device offers (`QueueSizeMax`).
pub const QUEUE_MAX: u16 = 256;

/// A running device's queues and memory.
struct Active {
    mem: Mem,
    interrupt: InterruptStatus,
    queues: Vec<Queue>,
}

impl Active {
    /// Pops every available chain of queue `q`, hands it to `serve` (which
    /// returns the used length, or `None` to keep it for later), and
    /// raises one interrupt if the driver asked for it. Stops at the first
    /// queue error (a peer fault: the test will notice a missing
    /// completion).
    fn serve(&mut self, q: usize, mut serve: impl FnMut(&Mem, &DescriptorChain) -> Option<u32>) {
        let Some(queue) = self.queues.get_mut(q) else {
            return;
        };
        if !queue.ready() {
            return;
        }
        let mut added = false;
        // Bounded: at most a queue's worth of chains per call.
        for _ in 0..queue.size() {
            let chain = match queue.pop(&self.mem) {
                Ok(Some(c)) => c,
                _ => break,
            };
            match serve(&self.mem, &chain) {
                Some(len) => {
                    if queue.add_used(&self.mem, chain.head_index(), len).is_err() {
                        break;
                    }
                    added = true;
                }
                None => {
                    queue.undo_pop();
                    break;
                }
            }
        }
        if added && queue.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.raise(InterruptCause::UsedBuffer);
        }
    }
}

/// Reads all of `descs` into one vector.
fn gather(mem: &Mem, descs: &[Descriptor]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for d in descs {
        let start = out.len();
        out.resize(start + usize::try_from(d.len).ok()?, 0);
        mem.read_slice(&mut out[start..], d.addr).ok()?;
    }
    Some(out)
}

/// Writes `data` across `descs` from their start; returns bytes written.
fn scatter(mem: &Mem, descs: &[Descriptor], data: &[u8]) -> usize {
    let mut done = 0;
    for d in descs {
        if done == data.len() {
            break;
        }
        let n = usize::try_from(d.len).unwrap_or(0).min(data.len() - done);
        if mem.write_slice(&data[done..done + n], d.addr).is_err() {
            break;
        }
        done += n;
    }
    done
}

/// Block device config space: capacity (le64 sectors) at 0, blk_size
/// (le32) at 20.
fn block_config(sectors: u64) -> Vec<u8> {
    let mut c = vec![0u8; 60];
    c[..8].copy_from_slice(&sectors.to_le_bytes());
    c[20..24].copy_from_slice(&512u32.to_le_bytes());
    c
}

fn read_config(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(off) = usize::try_from(offset) else {
        return;
    };
    for (i, b) in data.iter_mut().enumerate() {
        if let Some(v) = config.get(off.saturating_add(i)) {
            *b = *v;
        }
    }
}

/// A block device over a shared `Vec<u8>` (virtio v1.4 §5.2).
pub struct MemBlock {
    disk: Arc<Mutex<Vec<u8>>>,
    features: u64,
    config: Vec<u8>,
    active: Option<Active>,
    max: [u16; 1],
}

impl MemBlock {
    /// A disk of `sectors` 512-byte sectors offering `features` (block
    /// feature bits and transport bits such as EVENT_IDX, INDIRECT_DESC,
    /// RING_RESET). Returns the device and a handle on its contents.
    pub fn new(sectors: u64, features: u64) -> (Self, Arc<Mutex<Vec<u8>>>) {
        let bytes = usize::try_from(sectors * 512).expect("disk fits memory");
        let disk = Arc::new(Mutex::new(vec![0u8; bytes]));
        (
            Self {
                disk: disk.clone(),
                features,
                config: block_config(sectors),
                active: None,
                max: [QUEUE_MAX],
            },
            disk,
        )
    }

    fn request(disk: &Mutex<Vec<u8>>, mem: &Mem, chain: &DescriptorChain) -> u32 {
        let (status, data) = match chain.writable().split_last() {
            Some((s, d)) => (s, d),
            None => return 0,
        };
        let Some(readable) = gather(mem, chain.readable()) else {
            return 0;
        };
        let (Some(kind), Some(sector)) = (readable.get(..4), readable.get(8..16)) else {
            return 0;
        };
        let kind = u32::from_le_bytes(kind.try_into().unwrap_or_default());
        let sector = u64::from_le_bytes(sector.try_into().unwrap_or_default());
        let Ok(mut disk) = disk.lock() else {
            return 0;
        };
        let start = usize::try_from(sector)
            .ok()
            .and_then(|s| s.checked_mul(512));
        let mut st = 0u8;
        let mut written = 0usize;
        match kind {
            0 => {
                let n: usize = data.iter().map(|d| d.len as usize).sum();
                match start.and_then(|s| disk.get(s..s.checked_add(n)?)) {
                    Some(bytes) => written = scatter(mem, data, bytes),
                    None => st = 1,
                }
            }
            1 => {
                let payload = &readable[16..];
                match start.and_then(|s| disk.get_mut(s..s.checked_add(payload.len())?)) {
                    Some(bytes) => bytes.copy_from_slice(payload),
                    None => st = 1,
                }
            }
            4 => {}
            8 => {
                let mut id = [0u8; 20];
                id[..13].copy_from_slice(b"loopback-disk");
                written = scatter(mem, data, &id);
            }
            _ => st = 2,
        }
        if mem.write_slice(&[st], status.addr).is_err() {
            return 0;
        }
        u32::try_from(written + 1).unwrap_or(0)
    }
}

impl VirtioDevice<Mem> for MemBlock {
    fn device_type(&self) -> u32 {
        device_id::BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.max
    }
    fn device_features(&self) -> u64 {
        self.features
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config(&self.config, offset, data);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(
        &mut self,
        mem: Mem,
        interrupt: InterruptStatus,
        queues: Vec<Queue>,
        _features: u64,
    ) -> Result<(), ActivateError> {
        self.active = Some(Active {
            mem,
            interrupt,
            queues,
        });
        Ok(())
    }
    fn queue_notify(&mut self, index: u16, _data: Option<NotificationData>) {
        let disk = self.disk.clone();
        if let Some(a) = self.active.as_mut() {
            a.serve(usize::from(index), |mem, chain| {
                Some(Self::request(&disk, mem, chain))
            });
        }
    }
    fn reset(&mut self) {
        self.active = None;
    }
    fn queue_reset(&mut self, index: u16) {
        if let Some(q) = self
            .active
            .as_mut()
            .and_then(|a| a.queues.get_mut(usize::from(index)))
        {
            q.set_ready(false);
        }
    }
    fn queue_enable(&mut self, index: u16, queue: Queue) {
        if let Some(q) = self
            .active
            .as_mut()
            .and_then(|a| a.queues.get_mut(usize::from(index)))
        {
            *q = queue;
        }
    }
}

/// An entropy device writing bytes of a running counter (virtio v1.4
/// §5.4).
pub struct MemEntropy {
    features: u64,
    counter: u8,
    active: Option<Active>,
    max: [u16; 1],
}

impl MemEntropy {
    /// An entropy device offering `features` (transport bits).
    pub fn new(features: u64) -> Self {
        Self {
            features,
            counter: 0,
            active: None,
            max: [QUEUE_MAX],
        }
    }
}

impl VirtioDevice<Mem> for MemEntropy {
    fn device_type(&self) -> u32 {
        device_id::ENTROPY
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.max
    }
    fn device_features(&self) -> u64 {
        self.features
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(
        &mut self,
        mem: Mem,
        interrupt: InterruptStatus,
        queues: Vec<Queue>,
        _features: u64,
    ) -> Result<(), ActivateError> {
        self.active = Some(Active {
            mem,
            interrupt,
            queues,
        });
        Ok(())
    }
    fn queue_notify(&mut self, index: u16, _data: Option<NotificationData>) {
        let counter = &mut self.counter;
        if let Some(a) = self.active.as_mut() {
            a.serve(usize::from(index), |mem, chain| {
                if !chain.readable().is_empty() {
                    return Some(0);
                }
                let n = usize::try_from(chain.writable_len()).unwrap_or(0);
                let bytes: Vec<u8> = (0..n)
                    .map(|_| {
                        *counter = counter.wrapping_add(1);
                        *counter
                    })
                    .collect();
                u32::try_from(scatter(mem, chain.writable(), &bytes)).ok()
            });
        }
    }
    fn reset(&mut self) {
        self.active = None;
    }
    fn queue_reset(&mut self, index: u16) {
        if let Some(q) = self
            .active
            .as_mut()
            .and_then(|a| a.queues.get_mut(usize::from(index)))
        {
            q.set_ready(false);
        }
    }
    fn queue_enable(&mut self, index: u16, queue: Queue) {
        if let Some(q) = self
            .active
            .as_mut()
            .and_then(|a| a.queues.get_mut(usize::from(index)))
        {
            *q = queue;
        }
    }
}

/// What a [`MemConsole`] shares with the test.
#[derive(Default)]
pub struct ConsoleState {
    /// Bytes waiting to be delivered on receiveq(port0).
    pub input: VecDeque<u8>,
    /// Bytes the driver sent on transmitq(port0).
    pub output: Vec<u8>,
    active: Option<Active>,
}

impl ConsoleState {
    fn serve_rx(&mut self) {
        let input = &mut self.input;
        if let Some(a) = self.active.as_mut() {
            a.serve(0, |mem, chain| {
                if input.is_empty() {
                    return None;
                }
                let n = usize::try_from(chain.writable_len())
                    .unwrap_or(0)
                    .min(input.len());
                let bytes: Vec<u8> = input.drain(..n).collect();
                u32::try_from(scatter(mem, chain.writable(), &bytes)).ok()
            });
        }
    }

    fn serve_tx(&mut self) {
        let output = &mut self.output;
        if let Some(a) = self.active.as_mut() {
            a.serve(1, |mem, chain| {
                output.extend(gather(mem, chain.readable())?);
                Some(0)
            });
        }
    }
}

/// A shared handle on a console's state.
#[derive(Clone, Default)]
pub struct ConsoleHandle(pub Arc<Mutex<ConsoleState>>);

impl ConsoleHandle {
    /// Queues `bytes` as console input and delivers what fits in the
    /// receive buffers the driver posted.
    pub fn type_in(&self, bytes: &[u8]) {
        if let Ok(mut s) = self.0.lock() {
            s.input.extend(bytes);
            s.serve_rx();
        }
    }

    /// Everything the driver wrote so far.
    pub fn output(&self) -> Vec<u8> {
        self.0.lock().map(|s| s.output.clone()).unwrap_or_default()
    }
}

/// A one-port console (virtio v1.4 §5.3): receiveq(port0) = 0,
/// transmitq(port0) = 1, `cols`/`rows` with VIRTIO_CONSOLE_F_SIZE.
pub struct MemConsole {
    state: ConsoleHandle,
    features: u64,
    config: Vec<u8>,
    max: [u16; 2],
}

impl MemConsole {
    /// A console offering `features` (VIRTIO_CONSOLE_F_SIZE is added), of
    /// 80 x 25.
    pub fn new(features: u64) -> (Self, ConsoleHandle) {
        let state = ConsoleHandle::default();
        let mut config = vec![0u8; 12];
        config[..2].copy_from_slice(&80u16.to_le_bytes());
        config[2..4].copy_from_slice(&25u16.to_le_bytes());
        (
            Self {
                state: state.clone(),
                features: features | 1,
                config,
                max: [QUEUE_MAX, QUEUE_MAX],
            },
            state,
        )
    }
}

impl VirtioDevice<Mem> for MemConsole {
    fn device_type(&self) -> u32 {
        device_id::CONSOLE
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.max
    }
    fn device_features(&self) -> u64 {
        self.features
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config(&self.config, offset, data);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(
        &mut self,
        mem: Mem,
        interrupt: InterruptStatus,
        queues: Vec<Queue>,
        _features: u64,
    ) -> Result<(), ActivateError> {
        if let Ok(mut s) = self.state.0.lock() {
            s.active = Some(Active {
                mem,
                interrupt,
                queues,
            });
            s.serve_rx();
        }
        Ok(())
    }
    fn queue_notify(&mut self, index: u16, _data: Option<NotificationData>) {
        if let Ok(mut s) = self.state.0.lock() {
            match index {
                0 => s.serve_rx(),
                1 => s.serve_tx(),
                _ => {}
            }
        }
    }
    fn reset(&mut self) {
        if let Ok(mut s) = self.state.0.lock() {
            s.active = None;
        }
    }
    fn queue_reset(&mut self, index: u16) {
        // Host input must not reach a queue the driver reset: mark it not
        // ready, so that `serve_rx` finds it unusable.
        if let Ok(mut s) = self.state.0.lock() {
            if let Some(q) = s
                .active
                .as_mut()
                .and_then(|a| a.queues.get_mut(usize::from(index)))
            {
                q.set_ready(false);
            }
        }
    }
}

/// Makes sure the generic memory bound the devices rely on holds.
const _: fn() = || {
    fn is_memory<M: GuestMemory + Clone + Send>() {}
    is_memory::<Mem>();
};
