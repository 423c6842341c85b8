//! A Linux TAP device (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`), what
//! Firecracker and QEMU use in production.
//!
//! Every read and write carries a 12-byte `virtio_net_hdr` in front of the
//! frame (`TUNSETVNETHDRSZ`), so a partial checksum the guest leaves
//! (`VIRTIO_NET_HDR_F_NEEDS_CSUM`) goes to the host kernel as is, and the
//! kernel hands partial checksums to the guest only after
//! [`Backend::set_guest_csum`] turned on `TUN_F_CSUM`. Opening a TAP
//! device needs `CAP_NET_ADMIN` (or a persistent device owned by the user).

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vmmio_spec::net::{NetHdr, HDR_F_NEEDS_CSUM, HDR_SIZE};

use super::{Backend, Sent, MAX_FRAME_LEN};

// From <linux/if_tun.h>: `_IOW('T', n, int)` ioctl numbers and flags.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: libc::c_uint = 0x01;

/// A network link over a TAP device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    buf: Box<[u8]>,
}

/// `struct ifreq` as `TUNSETIFF` reads it: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tap {
    /// Opens (creating if needed) the TAP device `name` (at most 15
    /// bytes; empty lets the kernel pick `tapN`), non-blocking, with a
    /// 12-byte virtio-net header on every frame.
    ///
    /// # Errors
    /// `InvalidInput` for a bad name; the host error of opening
    /// `/dev/net/tun` or of the `TUNSETIFF` / `TUNSETVNETHDRSZ` ioctls
    /// (`EPERM` without `CAP_NET_ADMIN`).
    pub fn open(name: &str) -> io::Result<Self> {
        if name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad TAP device name {name:?}"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq` (40 bytes on
        // Linux); `req` is that layout and lives across the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let hdr_size: libc::c_int = HDR_SIZE as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ as _, &hdr_size) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let end = req
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(req.name.len());
        let name = String::from_utf8_lossy(&req.name[..end]).into_owned();
        let tap = Self {
            file,
            name,
            buf: vec![0; HDR_SIZE + MAX_FRAME_LEN].into_boxed_slice(),
        };
        tap.set_offload(0)?;
        Ok(tap)
    }

    /// The interface name the kernel gave the device.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn set_offload(&self, flags: libc::c_uint) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD as _,
                flags as libc::c_ulong,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Backend for Tap {
    fn fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }

    fn takes_hdr(&self) -> bool {
        true
    }

    fn set_guest_csum(&mut self, enabled: bool) {
        let flags = if enabled { TUN_F_CSUM } else { 0 };
        if let Err(e) = self.set_offload(flags) {
            log::warn!("tap {}: TUNSETOFFLOAD {flags:#x} failed: {e}", self.name);
        }
    }

    fn send(&mut self, hdr: &NetHdr, frame: &[u8]) -> io::Result<Sent> {
        // Only the checksum request goes to the kernel; nothing else the
        // guest wrote (no GSO was offered).
        let h = NetHdr {
            flags: hdr.flags & HDR_F_NEEDS_CSUM,
            csum_start: if hdr.flags & HDR_F_NEEDS_CSUM != 0 {
                hdr.csum_start
            } else {
                Default::default()
            },
            csum_offset: if hdr.flags & HDR_F_NEEDS_CSUM != 0 {
                hdr.csum_offset
            } else {
                Default::default()
            },
            ..NetHdr::default()
        }
        .to_bytes();
        match self
            .file
            .write_vectored(&[IoSlice::new(&h), IoSlice::new(frame)])
        {
            Ok(_) => Ok(Sent::Done),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Sent::Busy),
            Err(e) => Err(e),
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(NetHdr, usize)>> {
        // Bounded: a few malformed reads are skipped, then the next
        // readiness tries again.
        for _ in 0..16 {
            match self.file.read(&mut self.buf) {
                Ok(n) if n < HDR_SIZE => {
                    log::debug!("tap {}: short read of {n} bytes", self.name);
                }
                Ok(n) => {
                    let len = n - HDR_SIZE;
                    if len > buf.len() {
                        continue;
                    }
                    buf[..len].copy_from_slice(&self.buf[HDR_SIZE..n]);
                    let hdr = NetHdr::from_bytes(&self.buf[..HDR_SIZE]).unwrap_or_default();
                    return Ok(Some((hdr, len)));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}
