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
    /// Pops the next available chain.
    ///
    /// # Errors
    /// Placeholder.
    pub fn pop<M: GuestMemory>(&mut self, _mem: &M) -> Result<Option<DescriptorChain>, QueueError> {
        Err(QueueError::Unimplemented)
    }
}
