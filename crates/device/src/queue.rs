//! The device-role split virtqueue (spec 2.7 "Split Virtqueues").
//!
//! PLACEHOLDER API: being implemented; signatures are the contract between
//! the transport, the device backends and this module.

use vm_memory::{GuestAddress, GuestMemory};

/// Why a queue operation failed. Errors caused by the driver (bad indexes,
/// bad addresses) are peer faults: the device answers with
/// DEVICE_NEEDS_RESET, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Placeholder.
    #[error("not implemented")]
    Unimplemented,
}

/// One descriptor of a chain, as the device sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// Guest-physical address of the buffer.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (true) or device-readable (false).
    pub writable: bool,
}

/// A descriptor chain popped from the available ring.
#[derive(Clone, Debug, Default)]
pub struct DescriptorChain {
    head: u16,
    descriptors: Vec<Descriptor>,
}

impl DescriptorChain {
    /// Index of the head descriptor (what `add_used` takes).
    pub fn head_index(&self) -> u16 {
        self.head
    }
    /// All descriptors in chain order: readable ones first, then writable.
    pub fn descriptors(&self) -> &[Descriptor] {
        &self.descriptors
    }
}

/// A split virtqueue, device role.
#[derive(Clone, Debug)]
pub struct Queue {
    max_size: u16,
}

impl Queue {
    /// A queue whose `QueueSizeMax` is `max_size`.
    pub fn new(max_size: u16) -> Self {
        Self { max_size }
    }
    /// `QueueSizeMax`.
    pub fn max_size(&self) -> u16 {
        self.max_size
    }
    /// `QueueSize` as last set (defaults to `max_size`).
    pub fn size(&self) -> u16 {
        self.max_size
    }
    /// Sets `QueueSize`. The transport checks `size <= max_size` first.
    pub fn set_size(&mut self, _size: u16) {}
    /// Sets the guest-physical addresses of the descriptor table, the
    /// driver area (available ring) and the device area (used ring).
    pub fn set_addresses(&mut self, _desc: u64, _avail: u64, _used: u64) {}
    /// Checks size (power of two, <= max) and the three areas (alignment
    /// 16/2/4, inside `mem`) before the queue is enabled.
    ///
    /// # Errors
    /// Placeholder.
    pub fn validate<M: GuestMemory>(&self, _mem: &M) -> Result<(), QueueError> {
        Err(QueueError::Unimplemented)
    }
    /// Whether the queue is enabled (`QueueReady`).
    pub fn ready(&self) -> bool {
        false
    }
    /// Enables or disables the queue.
    pub fn set_ready(&mut self, _ready: bool) {}
    /// Applies negotiated features (EVENT_IDX, INDIRECT_DESC).
    pub fn set_features(&mut self, _features: u64) {}
    /// Puts a chain in the used ring: `head` its head index, `len` the bytes
    /// written into its writable part.
    ///
    /// # Errors
    /// Placeholder.
    pub fn add_used<M: GuestMemory>(&mut self, _mem: &M, _head: u16, _len: u32) -> Result<(), QueueError> {
        Err(QueueError::Unimplemented)
    }
    /// Whether the driver wants a used-buffer notification for what was
    /// added since the last call (EVENT_IDX or VIRTQ_AVAIL_F_NO_INTERRUPT).
    ///
    /// # Errors
    /// Placeholder.
    pub fn needs_notification<M: GuestMemory>(&mut self, _mem: &M) -> Result<bool, QueueError> {
        Err(QueueError::Unimplemented)
    }
    /// Pops the next available chain.
    ///
    /// # Errors
    /// Placeholder.
    pub fn pop<M: GuestMemory>(&mut self, _mem: &M) -> Result<Option<DescriptorChain>, QueueError> {
        Err(QueueError::Unimplemented)
    }
}
