//! The loopback network path against a plain Unix socket pair.
//!
//! Ours: `vmmio-driver`'s `Net` transmits through a loopback register
//! window to a `vmmio-devices` `Net` whose `-netdev stream` backend writes
//! to one end of a Unix socket pair; a second device reads the other end
//! (`MmioTransport::poll_backends`) into a second driver's receive buffers.
//! The peer: the same frames, with the same 4-byte length prefix, written
//! to and read from a Unix socket pair directly: the floor any virtio-net
//! backend on such a link pays.

use std::io::{self, IoSlice, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vmmio_device::TransportVersion;
use vmmio_devices::net::{Net as NetDevice, Stream};
use vmmio_driver::net::Net;
use vmmio_driver::{Error, Transport};
use vmmio_integration::{window, GuestHal, Loopback, Window};

/// Frames per batch (one transmit kick per frame, one receive sweep).
pub const BATCH: usize = 32;

/// Two drivers and two devices joined by a socket pair.
pub struct NetLoop {
    tx: Net<Loopback, GuestHal>,
    rx: Net<Loopback, GuestHal>,
    frame: Vec<u8>,
}

fn side(sock: UnixStream) -> io::Result<Net<Loopback, GuestHal>> {
    let dev = NetDevice::new(Box::new(Stream::new(sock)?));
    let Window { io, hal, .. } = window(TransportVersion::Modern, Box::new(dev));
    let t = Transport::probe(io)
        .map_err(io::Error::other)?
        .ok_or_else(|| io::Error::other("no device"))?;
    Net::new(t, hal).map_err(io::Error::other)
}

impl NetLoop {
    /// A loop sending frames of `len` bytes (14..=1514).
    ///
    /// # Errors
    /// Creating the socket pair or initialising a driver.
    pub fn new(len: usize) -> io::Result<Self> {
        let (a, b) = UnixStream::pair()?;
        let mut frame = vec![0x5au8; len];
        frame[..6].copy_from_slice(&[0xff; 6]);
        Ok(Self {
            tx: side(a)?,
            rx: side(b)?,
            frame,
        })
    }

    /// Sends [`BATCH`] frames and receives them on the other side; returns
    /// the frames moved.
    ///
    /// # Errors
    /// A driver error, or frames that never arrive (a bug).
    pub fn batch(&mut self) -> io::Result<u64> {
        for _ in 0..BATCH {
            match self.tx.transmit(&self.frame) {
                Ok(()) | Err(Error::QueueFull { .. }) => {}
                Err(e) => return Err(io::Error::other(e)),
            }
        }
        let mut got = 0usize;
        // Bounded: every frame sent is in the socket once transmit returns.
        for _ in 0..1000 {
            while self
                .rx
                .receive(|f| f.len())
                .map_err(io::Error::other)?
                .is_some()
            {
                got += 1;
            }
            if got >= BATCH {
                return Ok(got as u64);
            }
            self.rx
                .transport()
                .io_mut()
                .transport
                .poll_backends(Duration::ZERO)?;
        }
        Err(io::Error::other(format!("{got} of {BATCH} frames arrived")))
    }
}

/// The peer: length-prefixed frames over a Unix socket pair.
pub struct SocketPair {
    a: UnixStream,
    b: UnixStream,
    frame: Vec<u8>,
    buf: Vec<u8>,
}

impl SocketPair {
    /// A pair moving frames of `len` bytes.
    ///
    /// # Errors
    /// Creating the socket pair.
    pub fn new(len: usize) -> io::Result<Self> {
        let (a, b) = UnixStream::pair()?;
        Ok(Self {
            a,
            b,
            frame: vec![0x5a; len],
            buf: vec![0; 256 * 1024],
        })
    }

    /// Writes [`BATCH`] frames on one end and reads them at the other;
    /// returns the frames moved.
    ///
    /// # Errors
    /// A socket error.
    pub fn batch(&mut self) -> io::Result<u64> {
        let prefix = u32::try_from(self.frame.len())
            .map_err(io::Error::other)?
            .to_be_bytes();
        for _ in 0..BATCH {
            let mut iov = [IoSlice::new(&prefix), IoSlice::new(&self.frame)];
            let mut iov = &mut iov[..];
            while !iov.is_empty() {
                let n = self.a.write_vectored(iov)?;
                IoSlice::advance_slices(&mut iov, n);
            }
        }
        // Read in bulk and walk the prefixes, as the device's backend does.
        let total = BATCH * (4 + self.frame.len());
        let mut have = 0usize;
        while have < total {
            let n = self.b.read(&mut self.buf[have..])?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            have += n;
        }
        let mut frames = 0u64;
        let mut at = 0usize;
        let last = self.buf.len().min(have);
        while at + 4 <= last {
            let p = [
                self.buf[at],
                self.buf[at + 1],
                self.buf[at + 2],
                self.buf[at + 3],
            ];
            at += 4 + u32::from_be_bytes(p) as usize;
            frames += 1;
        }
        std::hint::black_box(frames);
        Ok(BATCH as u64)
    }
}
