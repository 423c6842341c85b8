//! Virtio device IDs (spec 5 "Device Types"), as read from `DeviceID`.

/// Reserved: an MMIO slot with no device behind it (4.2.2, placeholder).
pub const INVALID: u32 = 0;
/// Network device (5.1).
pub const NET: u32 = 1;
/// Block device (5.2).
pub const BLOCK: u32 = 2;
/// Console (5.3).
pub const CONSOLE: u32 = 3;
/// Entropy source (5.4).
pub const ENTROPY: u32 = 4;
/// Traditional memory balloon (5.5).
pub const BALLOON: u32 = 5;
/// SCSI host (5.6).
pub const SCSI: u32 = 8;
/// 9P transport.
pub const NINEP: u32 = 9;
/// GPU device (5.7).
pub const GPU: u32 = 16;
/// Input device (5.8).
pub const INPUT: u32 = 18;
/// Socket device (5.10).
pub const VSOCK: u32 = 19;
/// Crypto device (5.9).
pub const CRYPTO: u32 = 20;
/// IOMMU device (5.13).
pub const IOMMU: u32 = 23;
/// Memory device (5.15).
pub const MEM: u32 = 24;
/// Sound device (5.14).
pub const SOUND: u32 = 25;
/// File system device (5.11).
pub const FS: u32 = 26;
/// PMEM device (5.19).
pub const PMEM: u32 = 27;

/// A short name for a device ID, as used in logs ("block", "entropy", ...),
/// or `None` for IDs this table does not name.
pub const fn name(id: u32) -> Option<&'static str> {
    Some(match id {
        NET => "net",
        BLOCK => "block",
        CONSOLE => "console",
        ENTROPY => "entropy",
        BALLOON => "balloon",
        SCSI => "scsi",
        NINEP => "9p",
        GPU => "gpu",
        INPUT => "input",
        VSOCK => "vsock",
        CRYPTO => "crypto",
        IOMMU => "iommu",
        MEM => "mem",
        SOUND => "sound",
        FS => "fs",
        PMEM => "pmem",
        _ => return None,
    })
}
