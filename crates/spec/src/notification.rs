//! Notification data (spec 2.9 "Driver Notifications",
//! `notifications-data-le.c`).
//!
//! With VIRTIO_F_NOTIFICATION_DATA negotiated, the 32-bit value written to
//! `QueueNotify` packs the queue index and the driver's next position:
//! bits 0..16 `vqn`, bits 16..31 `next_off`, bit 31 `next_wrap`.

/// A decoded notification-data value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NotificationData {
    /// Virtqueue index.
    pub vqn: u16,
    /// Split ring: low 15 bits of the next available index. Packed ring:
    /// offset of the next available descriptor.
    pub next_off: u16,
    /// Split ring: bit 15 of the next available index. Packed ring: the
    /// driver's wrap counter.
    pub next_wrap: bool,
}

impl NotificationData {
    /// Decodes the 32-bit value written to `QueueNotify`.
    pub const fn from_u32(value: u32) -> Self {
        Self {
            vqn: (value & 0xffff) as u16,
            next_off: ((value >> 16) & 0x7fff) as u16,
            next_wrap: value >> 31 != 0,
        }
    }

    /// Encodes into the 32-bit value written to `QueueNotify`.
    pub const fn to_u32(self) -> u32 {
        (self.vqn as u32)
            | (((self.next_off & 0x7fff) as u32) << 16)
            | ((self.next_wrap as u32) << 31)
    }

    /// Split ring: the full 16-bit next available index (`next_off` with
    /// `next_wrap` as bit 15).
    pub const fn split_next_avail(self) -> u16 {
        (self.next_off & 0x7fff) | ((self.next_wrap as u16) << 15)
    }

    /// Split ring: the notification data for queue `vqn` whose next
    /// available index is `next_avail`.
    pub const fn for_split(vqn: u16, next_avail: u16) -> Self {
        Self {
            vqn,
            next_off: next_avail & 0x7fff,
            next_wrap: next_avail & 0x8000 != 0,
        }
    }

    /// Packed ring: the notification data for queue `vqn` whose next
    /// descriptor to make available is at encoded position `next`
    /// (descriptor index in bits 0..15, the driver's wrap counter in bit
    /// 15).
    pub const fn for_packed(vqn: u16, next: u16) -> Self {
        Self::for_split(vqn, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let d = NotificationData::for_split(3, 0x8005);
        assert_eq!(d.to_u32(), 0x8005_0003);
        assert_eq!(NotificationData::from_u32(0x8005_0003), d);
        assert_eq!(d.split_next_avail(), 0x8005);
    }
}
