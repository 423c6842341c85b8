//! The MMIO register file (spec 4.2.2). PLACEHOLDER: being implemented.

/// Which register layout a window presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportVersion {
    /// Legacy, `Version` = 1 (spec 4.2.4).
    Legacy,
    /// Modern, `Version` = 2 (spec 4.2.2).
    Modern,
}

/// One virtio-mmio register window. Placeholder.
#[derive(Debug)]
pub struct MmioTransport;
