//! Where the network device's frames go and come from.
//!
//! A [`Backend`] moves whole Ethernet frames (no preamble, no FCS) between
//! the device and the host, never blocking: the device polls its fd
//! through [`vmmio_device::VirtioDevice::backend_fds`] and calls
//! [`Backend::recv`] / [`Backend::flush`] when it is ready.
//!
//! - [`Stream`]: a Unix stream socket with QEMU's `-netdev stream`
//!   framing (each frame preceded by its length, 4 bytes big-endian);
//! - [`Tap`]: a Linux TAP device with `IFF_VNET_HDR`, which takes and
//!   gives partial checksums through the `virtio_net_hdr`.

use std::io;
use std::os::fd::RawFd;

use vmmio_spec::net::NetHdr;

pub mod stream;
pub mod tap;

pub use stream::Stream;
pub use tap::Tap;

/// Longest frame (Ethernet header included) any backend carries, in bytes.
/// No segmentation offload is offered, so a frame is at most the MTU plus
/// an Ethernet header with one VLAN tag; 64 KiB bounds every buffer.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// What [`Backend::send`] did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// The frame was written or queued whole.
    Done,
    /// No room now: the frame was not taken; try again once the fd is
    /// writable (the backend then reports [`Backend::wants_write`]).
    Busy,
}

/// A host-side network link of the virtio-net device.
pub trait Backend: Send {
    /// The fd the device waits on (readable: frames may be there;
    /// writable: queued output may go on). `None` when the link is gone
    /// (peer closed): the device then stops polling it.
    fn fd(&self) -> Option<RawFd>;

    /// Whether frames carry their `virtio_net_hdr` through the backend, so
    /// partial checksums (`VIRTIO_NET_HDR_F_NEEDS_CSUM`) can be passed on
    /// instead of completed by the device. Default: no.
    fn takes_hdr(&self) -> bool {
        false
    }

    /// Tells the backend whether the driver accepts frames with a partial
    /// checksum (VIRTIO_NET_F_GUEST_CSUM negotiated). Default: ignored.
    fn set_guest_csum(&mut self, enabled: bool) {
        let _ = enabled;
    }

    /// Sends one frame of at most [`MAX_FRAME_LEN`] bytes; `hdr` matters
    /// only when [`Backend::takes_hdr`].
    ///
    /// # Errors
    /// A host I/O error; the frame is lost (the device counts it).
    fn send(&mut self, hdr: &NetHdr, frame: &[u8]) -> io::Result<Sent>;

    /// Reads the next whole frame into `buf` (at least [`MAX_FRAME_LEN`]
    /// bytes) and returns its header (flags 0 unless [`Backend::takes_hdr`])
    /// and length, or `None` when no whole frame is there now.
    ///
    /// # Errors
    /// A host I/O error; the device logs it and tries again at the next
    /// readiness.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(NetHdr, usize)>>;

    /// Whether output waits for the fd to become writable.
    fn wants_write(&self) -> bool {
        false
    }

    /// Writes queued output as far as the fd takes it.
    ///
    /// # Errors
    /// A host I/O error.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
