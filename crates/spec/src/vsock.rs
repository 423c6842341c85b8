//! Socket device facts (virtio v1.4 §5.10 "Socket Device"): queues,
//! feature bits, the configuration layout, the packet header, operations,
//! flags and events. Shared by the device backend (`vmmio-devices`) and
//! the class driver (`vmmio-driver`).

use crate::le::{Le16, Le32, Le64};

/// Index of the rx virtqueue (device to driver packets).
pub const RXQ: u16 = 0;
/// Index of the tx virtqueue (driver to device packets).
pub const TXQ: u16 = 1;
/// Index of the event virtqueue (device events).
pub const EVENTQ: u16 = 2;
/// Number of virtqueues.
pub const NUM_QUEUES: usize = 3;

/// `VIRTIO_VSOCK_F_STREAM` (bit 0): stream sockets are supported.
pub const F_STREAM: u32 = 0;
/// `VIRTIO_VSOCK_F_SEQPACKET` (bit 1): seqpacket sockets are supported.
pub const F_SEQPACKET: u32 = 1;
/// `VIRTIO_VSOCK_F_NO_IMPLIED_STREAM` (bit 2): stream is not implied when
/// no socket-type bit was negotiated.
pub const F_NO_IMPLIED_STREAM: u32 = 2;

/// The well-known CID of the host (§5.10.4).
pub const HOST_CID: u64 = 2;

/// Whether `cid` may be a guest's context ID (§5.10.4): not 0, 1, 2,
/// `0xffffffff`, and the upper 32 bits zero (which also rules out
/// `0xffffffffffffffff`).
pub const fn is_valid_guest_cid(cid: u64) -> bool {
    cid > HOST_CID && cid < 0xffff_ffff
}

/// `struct virtio_vsock_config` (§5.10.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Config {
    /// The guest's context ID; upper 32 bits reserved and zero.
    pub guest_cid: Le64,
}

/// Size of [`Config`] in bytes.
pub const CONFIG_SIZE: usize = 8;
const _: () = assert!(core::mem::size_of::<Config>() == CONFIG_SIZE);

/// Size of `struct virtio_vsock_hdr` in bytes (packed, §5.10.6).
pub const HEADER_SIZE: usize = 44;

/// `VIRTIO_VSOCK_TYPE_STREAM`.
pub const TYPE_STREAM: u16 = 1;
/// `VIRTIO_VSOCK_TYPE_SEQPACKET`.
pub const TYPE_SEQPACKET: u16 = 2;

/// Operations (`op` field of the header, §5.10.6).
pub mod op {
    /// `VIRTIO_VSOCK_OP_INVALID`.
    pub const INVALID: u16 = 0;
    /// `VIRTIO_VSOCK_OP_REQUEST`: open a connection.
    pub const REQUEST: u16 = 1;
    /// `VIRTIO_VSOCK_OP_RESPONSE`: accept a connection.
    pub const RESPONSE: u16 = 2;
    /// `VIRTIO_VSOCK_OP_RST`: refuse or abort a connection.
    pub const RST: u16 = 3;
    /// `VIRTIO_VSOCK_OP_SHUTDOWN`: no more receiving and/or sending.
    pub const SHUTDOWN: u16 = 4;
    /// `VIRTIO_VSOCK_OP_RW`: payload.
    pub const RW: u16 = 5;
    /// `VIRTIO_VSOCK_OP_CREDIT_UPDATE`: the sender's `buf_alloc` / `fwd_cnt`.
    pub const CREDIT_UPDATE: u16 = 6;
    /// `VIRTIO_VSOCK_OP_CREDIT_REQUEST`: ask for a CREDIT_UPDATE.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// `VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE` as a mask of `flags` (bit 0): the
/// sender will receive no more data.
pub const SHUTDOWN_F_RECEIVE: u32 = 1 << 0;
/// `VIRTIO_VSOCK_SHUTDOWN_F_SEND` as a mask of `flags` (bit 1): the sender
/// will send no more data.
pub const SHUTDOWN_F_SEND: u32 = 1 << 1;

/// `VIRTIO_VSOCK_SEQ_EOM` (seqpacket, last packet of a message).
pub const SEQ_EOM: u32 = 1 << 0;
/// `VIRTIO_VSOCK_SEQ_EOR` (seqpacket, last packet of a record).
pub const SEQ_EOR: u32 = 1 << 1;

/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` (§5.10.6.6).
pub const EVENT_TRANSPORT_RESET: u32 = 0;
/// Size of `struct virtio_vsock_event` in bytes.
pub const EVENT_SIZE: usize = 4;

/// `struct virtio_vsock_event` (§5.10.6.6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Event {
    /// `VIRTIO_VSOCK_EVENT_*`.
    pub id: Le32,
}
const _: () = assert!(core::mem::size_of::<Event>() == EVENT_SIZE);

/// `struct virtio_vsock_hdr` (§5.10.6), 44 bytes, no padding. `packed`
/// because the spec's layout puts a 64-bit field at offset 0 and ends at
/// 44: read fields by value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, packed)]
pub struct Header {
    /// Source CID; upper 32 bits reserved and zero.
    pub src_cid: Le64,
    /// Destination CID; upper 32 bits reserved and zero.
    pub dst_cid: Le64,
    /// Source port.
    pub src_port: Le32,
    /// Destination port.
    pub dst_port: Le32,
    /// Payload length in bytes.
    pub len: Le32,
    /// `TYPE_STREAM` or `TYPE_SEQPACKET`.
    pub type_: Le16,
    /// One of [`op`].
    pub op: Le16,
    /// SHUTDOWN flags, or seqpacket flags on RW.
    pub flags: Le32,
    /// The sender's total receive buffer space for this socket, in bytes.
    pub buf_alloc: Le32,
    /// The sender's free-running count of bytes received and consumed.
    pub fwd_cnt: Le32,
}
const _: () = assert!(core::mem::size_of::<Header>() == HEADER_SIZE);

impl Header {
    /// The header from its 44 wire bytes.
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Self {
        let u64_at = |o: usize| {
            Le64::from_bytes([
                b[o],
                b[o + 1],
                b[o + 2],
                b[o + 3],
                b[o + 4],
                b[o + 5],
                b[o + 6],
                b[o + 7],
            ])
        };
        let u32_at = |o: usize| Le32::from_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u16_at = |o: usize| Le16::from_bytes([b[o], b[o + 1]]);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// The 44 wire bytes of the header.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        let h = *self;
        b[0..8].copy_from_slice(&h.src_cid.to_bytes());
        b[8..16].copy_from_slice(&h.dst_cid.to_bytes());
        b[16..20].copy_from_slice(&h.src_port.to_bytes());
        b[20..24].copy_from_slice(&h.dst_port.to_bytes());
        b[24..28].copy_from_slice(&h.len.to_bytes());
        b[28..30].copy_from_slice(&h.type_.to_bytes());
        b[30..32].copy_from_slice(&h.op.to_bytes());
        b[32..36].copy_from_slice(&h.flags.to_bytes());
        b[36..40].copy_from_slice(&h.buf_alloc.to_bytes());
        b[40..44].copy_from_slice(&h.fwd_cnt.to_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_at_the_spec_offsets() {
        let h = Header {
            src_cid: Le64::new(3),
            dst_cid: Le64::new(2),
            src_port: Le32::new(0x1234),
            dst_port: Le32::new(1234),
            len: Le32::new(7),
            type_: Le16::new(TYPE_STREAM),
            op: Le16::new(op::RW),
            flags: Le32::new(SHUTDOWN_F_SEND),
            buf_alloc: Le32::new(0x0004_0000),
            fwd_cnt: Le32::new(0xdead_beef),
        };
        let b = h.to_bytes();
        assert_eq!(b[0], 3);
        assert_eq!(b[8], 2);
        assert_eq!(&b[16..18], &[0x34, 0x12]);
        assert_eq!(&b[24..28], &[7, 0, 0, 0]);
        assert_eq!(&b[28..32], &[1, 0, 5, 0]);
        assert_eq!(&b[40..44], &[0xef, 0xbe, 0xad, 0xde]);
        assert_eq!(Header::from_bytes(&b), h);
    }

    #[test]
    fn reserved_cids_are_not_guest_cids() {
        for cid in [0, 1, 2, 0xffff_ffff, u64::MAX, 1 << 32] {
            assert!(!is_valid_guest_cid(cid), "{cid:#x}");
        }
        assert!(is_valid_guest_cid(3));
        assert!(is_valid_guest_cid(0xffff_fffe));
    }
}
