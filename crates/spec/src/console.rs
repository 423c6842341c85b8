//! Console device facts (virtio v1.4 §5.3 "Console Device"): feature bits
//! and the queues of port 0. Shared by the device backend
//! (`vmmio-devices`) and the class driver (`vmmio-driver`).

/// `VIRTIO_CONSOLE_F_SIZE` (bit 0): `cols` and `rows` are valid.
pub const F_SIZE: u32 = 0;
/// `VIRTIO_CONSOLE_F_MULTIPORT` (bit 1): several ports, control queues.
pub const F_MULTIPORT: u32 = 1;
/// `VIRTIO_CONSOLE_F_EMERG_WRITE` (bit 2): `emerg_wr` is valid.
pub const F_EMERG_WRITE: u32 = 2;

/// Index of `receiveq(port0)` (device to driver).
pub const RECEIVEQ: u16 = 0;
/// Index of `transmitq(port0)` (driver to device).
pub const TRANSMITQ: u16 = 1;
