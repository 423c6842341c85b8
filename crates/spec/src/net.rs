//! Network device facts (virtio v1.4 §5.1 "Network Device"): feature bits,
//! the configuration layout, `struct virtio_net_hdr` and its flag and GSO
//! values, the queue indexes of the first queue pair. Shared by the device
//! backend (`vmmio-devices`) and the class driver (`vmmio-driver`).

use crate::le::Le16;

/// `VIRTIO_NET_F_CSUM` (bit 0): the device handles packets with a partial
/// checksum (the driver may send `VIRTIO_NET_HDR_F_NEEDS_CSUM`).
pub const F_CSUM: u32 = 0;
/// `VIRTIO_NET_F_GUEST_CSUM` (bit 1): the driver handles packets with a
/// partial checksum (the device may send `NEEDS_CSUM` / `DATA_VALID`).
pub const F_GUEST_CSUM: u32 = 1;
/// `VIRTIO_NET_F_CTRL_GUEST_OFFLOADS` (bit 2).
pub const F_CTRL_GUEST_OFFLOADS: u32 = 2;
/// `VIRTIO_NET_F_MTU` (bit 3): `mtu` in the configuration is valid.
pub const F_MTU: u32 = 3;
/// `VIRTIO_NET_F_MAC` (bit 5): `mac` in the configuration is valid.
pub const F_MAC: u32 = 5;
/// `VIRTIO_NET_F_GUEST_TSO4` (bit 7).
pub const F_GUEST_TSO4: u32 = 7;
/// `VIRTIO_NET_F_GUEST_TSO6` (bit 8).
pub const F_GUEST_TSO6: u32 = 8;
/// `VIRTIO_NET_F_GUEST_ECN` (bit 9).
pub const F_GUEST_ECN: u32 = 9;
/// `VIRTIO_NET_F_GUEST_UFO` (bit 10).
pub const F_GUEST_UFO: u32 = 10;
/// `VIRTIO_NET_F_HOST_TSO4` (bit 11).
pub const F_HOST_TSO4: u32 = 11;
/// `VIRTIO_NET_F_HOST_TSO6` (bit 12).
pub const F_HOST_TSO6: u32 = 12;
/// `VIRTIO_NET_F_HOST_ECN` (bit 13).
pub const F_HOST_ECN: u32 = 13;
/// `VIRTIO_NET_F_HOST_UFO` (bit 14).
pub const F_HOST_UFO: u32 = 14;
/// `VIRTIO_NET_F_MRG_RXBUF` (bit 15): the driver can merge receive
/// buffers; the header carries `num_buffers`.
pub const F_MRG_RXBUF: u32 = 15;
/// `VIRTIO_NET_F_STATUS` (bit 16): `status` in the configuration is valid.
pub const F_STATUS: u32 = 16;
/// `VIRTIO_NET_F_CTRL_VQ` (bit 17): the control virtqueue exists.
pub const F_CTRL_VQ: u32 = 17;
/// `VIRTIO_NET_F_CTRL_RX` (bit 18).
pub const F_CTRL_RX: u32 = 18;
/// `VIRTIO_NET_F_CTRL_VLAN` (bit 19).
pub const F_CTRL_VLAN: u32 = 19;
/// `VIRTIO_NET_F_GUEST_ANNOUNCE` (bit 21).
pub const F_GUEST_ANNOUNCE: u32 = 21;
/// `VIRTIO_NET_F_MQ` (bit 22): several queue pairs.
pub const F_MQ: u32 = 22;
/// `VIRTIO_NET_F_CTRL_MAC_ADDR` (bit 23).
pub const F_CTRL_MAC_ADDR: u32 = 23;

/// `VIRTIO_NET_S_LINK_UP` in `status`: the link is up.
pub const S_LINK_UP: u16 = 1;
/// `VIRTIO_NET_S_ANNOUNCE` in `status`: the driver should announce itself.
pub const S_ANNOUNCE: u16 = 2;

/// Index of `receiveq1` (device to driver).
pub const RECEIVEQ: u16 = 0;
/// Index of `transmitq1` (driver to device).
pub const TRANSMITQ: u16 = 1;

/// Length of an Ethernet header (destination, source, EtherType) in bytes.
pub const ETH_HLEN: usize = 14;

/// Byte offsets of the fields of `struct virtio_net_config` (§5.1.4).
pub mod config {
    /// `mac[6]`.
    pub const MAC: u64 = 0;
    /// `le16 status`.
    pub const STATUS: u64 = 6;
    /// `le16 max_virtqueue_pairs`.
    pub const MAX_VIRTQUEUE_PAIRS: u64 = 8;
    /// `le16 mtu`.
    pub const MTU: u64 = 10;
}

/// The leading fields of `struct virtio_net_config` (§5.1.4) up to `mtu`,
/// as they sit in the configuration space (12 bytes, little-endian).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Config {
    /// The device's MAC address (valid with `VIRTIO_NET_F_MAC`).
    pub mac: [u8; 6],
    /// `VIRTIO_NET_S_*` bits (valid with `VIRTIO_NET_F_STATUS`).
    pub status: Le16,
    /// Queue pairs (valid with `VIRTIO_NET_F_MQ`).
    pub max_virtqueue_pairs: Le16,
    /// Maximum transmission unit in bytes, without the Ethernet header
    /// (valid with `VIRTIO_NET_F_MTU`; 68..=65535).
    pub mtu: Le16,
}

/// Size of [`Config`] in bytes.
pub const CONFIG_SIZE: usize = core::mem::size_of::<Config>();
const _: () = assert!(CONFIG_SIZE == 12);

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum from `csum_start` to the
/// end of the packet is still to be computed and stored at `csum_start +
/// csum_offset`.
pub const HDR_F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the device validated the checksum.
pub const HDR_F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_F_RSC_INFO`.
pub const HDR_F_RSC_INFO: u8 = 4;

/// `VIRTIO_NET_HDR_GSO_NONE`: not a segmentation-offload packet.
pub const HDR_GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const HDR_GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP`.
pub const HDR_GSO_UDP: u8 = 3;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const HDR_GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN` (a flag bit of `gso_type`).
pub const HDR_GSO_ECN: u8 = 0x80;

/// `struct virtio_net_hdr` without the hash-report and tunnel tails
/// (§5.1.6): 12 bytes, little-endian.
///
/// Its length on the wire depends on the negotiation: 12 bytes with
/// VIRTIO_F_VERSION_1 or VIRTIO_NET_F_MRG_RXBUF, else 10 (the legacy
/// header has no `num_buffers`, §5.1.6.1); see [`hdr_len`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct NetHdr {
    /// `VIRTIO_NET_HDR_F_*` bits.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Length of the headers to copy into each segment, in bytes (a hint).
    pub hdr_len: Le16,
    /// Segment size for GSO, in bytes.
    pub gso_size: Le16,
    /// Where checksumming starts, in bytes from the start of the frame.
    pub csum_start: Le16,
    /// Where the checksum goes, in bytes after `csum_start`.
    pub csum_offset: Le16,
    /// Receive buffers the packet spans (MRG_RXBUF or VERSION_1 only).
    pub num_buffers: Le16,
}

/// Size of [`NetHdr`] (with `num_buffers`) in bytes.
pub const HDR_SIZE: usize = core::mem::size_of::<NetHdr>();
/// Size of the legacy header without `num_buffers`, in bytes.
pub const LEGACY_HDR_SIZE: usize = 10;
const _: () = assert!(HDR_SIZE == 12);

impl NetHdr {
    /// The 12 bytes of the header as stored in guest memory (the legacy
    /// header is the first 10).
    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_bytes());
        b
    }

    /// Parses a header from its stored bytes; a 10-byte (legacy) slice
    /// leaves `num_buffers` 0; a slice shorter than 10 bytes gives `None`.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let f = |i: usize| -> Option<Le16> { Some(Le16::from_bytes([*b.get(i)?, *b.get(i + 1)?])) };
        Some(Self {
            flags: *b.first()?,
            gso_type: *b.get(1)?,
            hdr_len: f(2)?,
            gso_size: f(4)?,
            csum_start: f(6)?,
            csum_offset: f(8)?,
            num_buffers: f(10).unwrap_or_default(),
        })
    }
}

/// Length in bytes of the `virtio_net_hdr` in front of every packet, given
/// the negotiated features (§5.1.6, §5.1.6.1): 12 with VERSION_1 or
/// MRG_RXBUF, else 10.
pub const fn hdr_len(features: u64) -> usize {
    let version_1 = features & (1 << crate::features::VIRTIO_F_VERSION_1) != 0;
    let mrg = features & (1 << F_MRG_RXBUF) != 0;
    if version_1 || mrg {
        HDR_SIZE
    } else {
        LEGACY_HDR_SIZE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{bit, VIRTIO_F_VERSION_1};

    #[test]
    fn header_round_trip_and_lengths() {
        let h = NetHdr {
            flags: HDR_F_NEEDS_CSUM,
            gso_type: HDR_GSO_NONE,
            hdr_len: Le16::new(0x0102),
            gso_size: Le16::new(0x0304),
            csum_start: Le16::new(34),
            csum_offset: Le16::new(16),
            num_buffers: Le16::new(3),
        };
        let b = h.to_bytes();
        assert_eq!(&b[..4], &[1, 0, 2, 1]);
        assert_eq!(&b[6..12], &[34, 0, 16, 0, 3, 0]);
        assert_eq!(NetHdr::from_bytes(&b), Some(h));
        let legacy = NetHdr::from_bytes(&b[..LEGACY_HDR_SIZE]).unwrap();
        assert_eq!(legacy.num_buffers.get(), 0);
        assert_eq!(NetHdr::from_bytes(&b[..9]), None);
        assert_eq!(hdr_len(0), 10);
        assert_eq!(hdr_len(bit(F_MRG_RXBUF)), 12);
        assert_eq!(hdr_len(bit(VIRTIO_F_VERSION_1)), 12);
    }
}
