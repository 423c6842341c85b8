//! Block device facts (virtio v1.4 §5.2 "Block Device"): request layout,
//! request types, status values and feature bits. Shared by the device
//! backend (`vmmio-devices`) and the class driver (`vmmio-driver`).

/// Sector size in bytes: the unit of `sector`, `capacity` and the data
/// length of IN/OUT requests whatever `blk_size` says (virtio v1.4 §5.2.5).
pub const SECTOR_SIZE: u64 = 512;

/// Size of `struct virtio_blk_req`'s header (`type`, `reserved`, `sector`)
/// in bytes.
pub const HEADER_SIZE: u64 = 16;

/// Length of the device ID string of `VIRTIO_BLK_T_GET_ID` in bytes.
pub const ID_BYTES: usize = 20;

/// Size of one `struct virtio_blk_discard_write_zeroes` segment in bytes.
pub const SEGMENT_SIZE: u64 = 16;

/// Byte offsets of the fields of `struct virtio_blk_config` (virtio v1.4
/// §5.2.4) in the device configuration space; multi-byte fields are
/// little-endian.
pub mod config {
    /// `capacity`, le64, in 512-byte sectors.
    pub const CAPACITY: u64 = 0;
    /// `size_max`, le32, bytes (VIRTIO_BLK_F_SIZE_MAX).
    pub const SIZE_MAX: u64 = 8;
    /// `seg_max`, le32 (VIRTIO_BLK_F_SEG_MAX).
    pub const SEG_MAX: u64 = 12;
    /// `geometry`, 4 bytes (VIRTIO_BLK_F_GEOMETRY).
    pub const GEOMETRY: u64 = 16;
    /// `blk_size`, le32, bytes (VIRTIO_BLK_F_BLK_SIZE).
    pub const BLK_SIZE: u64 = 20;
    /// `topology`, 8 bytes (VIRTIO_BLK_F_TOPOLOGY).
    pub const TOPOLOGY: u64 = 24;
    /// `writeback`, u8 (VIRTIO_BLK_F_CONFIG_WCE).
    pub const WRITEBACK: u64 = 32;
    /// `num_queues`, le16 (VIRTIO_BLK_F_MQ).
    pub const NUM_QUEUES: u64 = 34;
    /// `max_discard_sectors`, le32 (VIRTIO_BLK_F_DISCARD).
    pub const MAX_DISCARD_SECTORS: u64 = 36;
    /// `max_discard_seg`, le32.
    pub const MAX_DISCARD_SEG: u64 = 40;
    /// `discard_sector_alignment`, le32, sectors.
    pub const DISCARD_SECTOR_ALIGNMENT: u64 = 44;
    /// `max_write_zeroes_sectors`, le32 (VIRTIO_BLK_F_WRITE_ZEROES).
    pub const MAX_WRITE_ZEROES_SECTORS: u64 = 48;
    /// `max_write_zeroes_seg`, le32.
    pub const MAX_WRITE_ZEROES_SEG: u64 = 52;
    /// `write_zeroes_may_unmap`, u8.
    pub const WRITE_ZEROES_MAY_UNMAP: u64 = 56;
}

/// Request types (`type` field of the header, virtio v1.4 §5.2.6).
pub mod types {
    /// Read sectors into the writable data.
    pub const IN: u32 = 0;
    /// Write the readable data to sectors.
    pub const OUT: u32 = 1;
    /// Make completed writes durable.
    pub const FLUSH: u32 = 4;
    /// Fetch the 20-byte device ID string.
    pub const GET_ID: u32 = 8;
    /// Fetch storage lifetime metrics (not supported here).
    pub const GET_LIFETIME: u32 = 10;
    /// Discard sector ranges.
    pub const DISCARD: u32 = 11;
    /// Zero sector ranges.
    pub const WRITE_ZEROES: u32 = 13;
    /// Securely erase sector ranges (not supported here).
    pub const SECURE_ERASE: u32 = 14;
    /// Zoned: append (not supported here).
    pub const ZONE_APPEND: u32 = 15;
    /// Zoned: report zones (not supported here).
    pub const ZONE_REPORT: u32 = 16;
    /// Zoned: open a zone (not supported here).
    pub const ZONE_OPEN: u32 = 18;
    /// Zoned: close a zone (not supported here).
    pub const ZONE_CLOSE: u32 = 20;
    /// Zoned: finish a zone (not supported here).
    pub const ZONE_FINISH: u32 = 22;
    /// Zoned: reset a zone (not supported here).
    pub const ZONE_RESET: u32 = 24;
    /// Zoned: reset all zones (not supported here).
    pub const ZONE_RESET_ALL: u32 = 26;
}

/// Status values (the last byte of every request, virtio v1.4 §5.2.6).
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// Device or driver error.
    pub const IOERR: u8 = 1;
    /// Request type (or flag) not supported.
    pub const UNSUPP: u8 = 2;
}

/// Block feature bit numbers (virtio v1.4 §5.2.3).
pub mod features {
    /// `size_max` is valid.
    pub const SIZE_MAX: u32 = 1;
    /// `seg_max` is valid.
    pub const SEG_MAX: u32 = 2;
    /// `geometry` is valid.
    pub const GEOMETRY: u32 = 4;
    /// The device is read-only.
    pub const RO: u32 = 5;
    /// `blk_size` is valid.
    pub const BLK_SIZE: u32 = 6;
    /// `VIRTIO_BLK_T_FLUSH` is supported.
    pub const FLUSH: u32 = 9;
    /// `topology` is valid.
    pub const TOPOLOGY: u32 = 10;
    /// `writeback` can be toggled.
    pub const CONFIG_WCE: u32 = 11;
    /// Several request queues; `num_queues` is valid.
    pub const MQ: u32 = 12;
    /// `VIRTIO_BLK_T_DISCARD` is supported.
    pub const DISCARD: u32 = 13;
    /// `VIRTIO_BLK_T_WRITE_ZEROES` is supported.
    pub const WRITE_ZEROES: u32 = 14;
    /// `VIRTIO_BLK_T_GET_LIFETIME` is supported.
    pub const LIFETIME: u32 = 15;
    /// `VIRTIO_BLK_T_SECURE_ERASE` is supported.
    pub const SECURE_ERASE: u32 = 16;
    /// Zoned block device.
    pub const ZONED: u32 = 17;
}
