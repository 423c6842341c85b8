//! Frames over a Unix stream socket, QEMU's `-netdev stream` framing: each
//! frame is preceded by its length in bytes as a 4-byte big-endian number.
//!
//! The socket is non-blocking. Output the socket does not take at once
//! waits in a bounded buffer (then [`Sent::Busy`] holds frames back in the
//! guest's transmit queue); input is reassembled in a buffer of one
//! maximum frame plus its prefix. A length prefix above [`MAX_FRAME_LEN`]
//! is skipped with its frame (counted in [`Stream::oversized`]), so one bad
//! frame does not lose the framing.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use vmmio_spec::net::NetHdr;

use super::{Backend, Sent, MAX_FRAME_LEN};

/// Bytes of the length prefix.
const PREFIX: usize = 4;
/// Most output bytes kept while the socket is full.
pub const MAX_PENDING_OUTPUT: usize = 256 * 1024;
/// Input buffer size: one maximum frame with its prefix, twice, so a
/// read brings several small frames at once.
const IN_BUF: usize = 2 * (PREFIX + MAX_FRAME_LEN);

/// A network link over a connected Unix stream socket.
pub struct Stream {
    sock: UnixStream,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    out_done: usize,
    inp: Box<[u8]>,
    /// Unparsed input is `inp[in_start..in_end]`.
    in_start: usize,
    in_end: usize,
    /// Bytes of an oversized frame still to skip.
    skip: usize,
    oversized: u64,
    closed: bool,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("pending_output", &(self.out.len() - self.out_done))
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Stream {
    /// A link over `sock` (made non-blocking here).
    ///
    /// # Errors
    /// The host error of `fcntl(2)`.
    pub fn new(sock: UnixStream) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(Self {
            sock,
            out: Vec::new(),
            out_done: 0,
            inp: vec![0; IN_BUF].into_boxed_slice(),
            in_start: 0,
            in_end: 0,
            skip: 0,
            oversized: 0,
            closed: false,
        })
    }

    /// A link to the Unix socket listening at `path` (QEMU's
    /// `-netdev stream,server=on,addr.type=unix,addr.path=PATH`, another
    /// vmmio's peer, a test harness).
    ///
    /// # Errors
    /// The host error of `connect(2)`.
    pub fn connect(path: impl AsRef<Path>) -> io::Result<Self> {
        Self::new(UnixStream::connect(path)?)
    }

    /// Frames skipped because their length prefix exceeded
    /// [`MAX_FRAME_LEN`].
    pub fn oversized(&self) -> u64 {
        self.oversized
    }

    fn pending(&self) -> usize {
        self.out.len() - self.out_done
    }

    /// Parses one frame out of the input buffer, skipping oversized ones.
    fn parse(&mut self, buf: &mut [u8]) -> Option<usize> {
        loop {
            let avail = self.in_end - self.in_start;
            if self.skip > 0 {
                let n = self.skip.min(avail);
                self.skip -= n;
                self.in_start += n;
                if self.skip > 0 {
                    return None;
                }
                continue;
            }
            if avail < PREFIX {
                return None;
            }
            let p = &self.inp[self.in_start..self.in_start + PREFIX];
            // A u32 always fits usize on the hosts vm-memory supports.
            let len =
                usize::try_from(u32::from_be_bytes([p[0], p[1], p[2], p[3]])).unwrap_or(usize::MAX);
            if len > MAX_FRAME_LEN || len > buf.len() {
                self.oversized += 1;
                log::debug!("netdev stream: skipping a frame of {len} bytes");
                self.in_start += PREFIX;
                self.skip = len;
                continue;
            }
            if avail < PREFIX + len {
                return None;
            }
            let from = self.in_start + PREFIX;
            buf[..len].copy_from_slice(&self.inp[from..from + len]);
            self.in_start = from + len;
            return Some(len);
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl Backend for Stream {
    fn fd(&self) -> Option<RawFd> {
        (!self.closed).then(|| self.sock.as_raw_fd())
    }

    fn send(&mut self, _hdr: &NetHdr, frame: &[u8]) -> io::Result<Sent> {
        if self.closed {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        let len = u32::try_from(frame.len())
            .ok()
            .filter(|_| frame.len() <= MAX_FRAME_LEN)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        if self.pending() + PREFIX + frame.len() > MAX_PENDING_OUTPUT {
            self.flush()?;
            if self.pending() + PREFIX + frame.len() > MAX_PENDING_OUTPUT {
                return Ok(Sent::Busy);
            }
        }
        if self.pending() == 0 {
            self.out.clear();
            self.out_done = 0;
            // Common case: the socket takes it all at once, no copy.
            let prefix = len.to_be_bytes();
            let iov = [io::IoSlice::new(&prefix), io::IoSlice::new(frame)];
            let n = match self.sock.write_vectored(&iov) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => {
                    self.closed = e.kind() == io::ErrorKind::BrokenPipe;
                    return Err(e);
                }
            };
            let total = PREFIX + frame.len();
            if n < total {
                // Keep the rest for later, so the framing stays whole.
                if n < PREFIX {
                    self.out.extend_from_slice(&prefix[n..]);
                    self.out.extend_from_slice(frame);
                } else {
                    self.out.extend_from_slice(&frame[n - PREFIX..]);
                }
            }
            return Ok(Sent::Done);
        }
        self.out.extend_from_slice(&len.to_be_bytes());
        self.out.extend_from_slice(frame);
        self.flush()?;
        Ok(Sent::Done)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(NetHdr, usize)>> {
        // At most two reads: the buffer holds a whole maximum frame.
        for _ in 0..2 {
            if let Some(n) = self.parse(buf) {
                return Ok(Some((NetHdr::default(), n)));
            }
            if self.closed {
                return Ok(None);
            }
            if self.in_start > 0 {
                self.inp.copy_within(self.in_start..self.in_end, 0);
                self.in_end -= self.in_start;
                self.in_start = 0;
            }
            match self.sock.read(&mut self.inp[self.in_end..]) {
                Ok(0) => {
                    log::info!("netdev stream: peer closed the link");
                    self.closed = true;
                }
                Ok(n) => self.in_end += n,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
        Ok(self.parse(buf).map(|n| (NetHdr::default(), n)))
    }

    fn wants_write(&self) -> bool {
        !self.closed && self.pending() > 0
    }

    fn flush(&mut self) -> io::Result<()> {
        while self.pending() > 0 {
            match self.sock.write(&self.out[self.out_done..]) {
                Ok(0) => break,
                Ok(n) => self.out_done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.closed = e.kind() == io::ErrorKind::BrokenPipe;
                    return Err(e);
                }
            }
        }
        if self.pending() == 0 {
            self.out.clear();
            self.out_done = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Stream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Stream::new(a).unwrap(), b)
    }

    #[test]
    fn frames_are_length_prefixed_big_endian() {
        let (mut s, mut peer) = pair();
        assert_eq!(s.send(&NetHdr::default(), b"hello").unwrap(), Sent::Done);
        let mut got = [0u8; 9];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"\0\0\0\x05hello");
        // Two frames in one write, the second split across two writes.
        peer.write_all(b"\0\0\0\x03abc\0\0\0\x04de").unwrap();
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        assert_eq!(s.recv(&mut buf).unwrap().unwrap().1, 3);
        assert_eq!(&buf[..3], b"abc");
        assert!(s.recv(&mut buf).unwrap().is_none());
        peer.write_all(b"fg").unwrap();
        assert_eq!(s.recv(&mut buf).unwrap().unwrap().1, 4);
        assert_eq!(&buf[..4], b"defg");
    }

    #[test]
    fn oversized_frame_is_skipped_and_framing_kept() {
        let (mut s, mut peer) = pair();
        let big = (MAX_FRAME_LEN + 1) as u32;
        peer.write_all(&big.to_be_bytes()).unwrap();
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        let junk = vec![7u8; MAX_FRAME_LEN + 1];
        let writer = std::thread::spawn(move || {
            peer.write_all(&junk).unwrap();
            peer.write_all(b"\0\0\0\x02ok").unwrap();
            peer
        });
        let mut got = None;
        for _ in 0..10_000 {
            if let Some((_, n)) = s.recv(&mut buf).unwrap() {
                got = Some(n);
                break;
            }
            std::thread::yield_now();
        }
        let _peer = writer.join().unwrap();
        assert_eq!(got, Some(2));
        assert_eq!(&buf[..2], b"ok");
        assert_eq!(s.oversized(), 1);
    }

    #[test]
    fn full_socket_keeps_frames_whole_then_reports_busy() {
        let (mut s, mut peer) = pair();
        let frame = vec![0xabu8; 1500];
        let mut sent = 0usize;
        // The peer does not read: output piles up to the bound.
        while let Sent::Done = s.send(&NetHdr::default(), &frame).unwrap() {
            sent += 1;
            assert!(sent < 100_000, "never busy");
        }
        assert!(s.wants_write());
        // Drain on the peer side while flushing: every frame arrives whole.
        peer.set_nonblocking(true).unwrap();
        let mut data = Vec::new();
        let mut chunk = vec![0u8; 65536];
        while s.wants_write() || data.len() < sent * 1504 {
            s.flush().unwrap();
            match peer.read(&mut chunk) {
                Ok(n) => data.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(data.len(), sent * 1504);
        for f in data.chunks(1504) {
            assert_eq!(&f[..4], &1500u32.to_be_bytes());
            assert!(f[4..].iter().all(|&b| b == 0xab));
        }
    }

    #[test]
    fn peer_close_stops_polling() {
        let (mut s, peer) = pair();
        drop(peer);
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        assert!(s.recv(&mut buf).unwrap().is_none());
        assert_eq!(s.fd(), None);
    }
}
